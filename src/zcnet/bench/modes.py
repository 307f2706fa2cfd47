"""The benchmark's one mode vocabulary: every mode's name, and its words for plots.

No zcnet imports, so the CLI parser stays light.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ASKED_SEND_MODES", "ASYNCIO_RECEIVE_MODES", "C_RECEIVE_MODES", "C_SEND_MODES",
           "DASK_VARIANT_NAMES", "DEFAULT_C_SEND_MODES", "LEASE_SEND_MODES",
           "MEMORY_SEND_MODES", "MODE_WORDS", "QUICK_SEND_MODES",
           "RECEIVE_MODES", "RECEIVE_WORDS", "RPC_CHURNS", "RPC_CHURN_VARIANTS", "RPC_MODES",
           "RXMEM_MODES", "RX_SENDERS", "SEND_MODES",
           "UDP_ONLY_SEND_MODES", "URING_C_SEND_MODES", "URING_SEND_MODES", "UVLOOP_SUFFIX",
           "ZCNET_URING_SEND_MODES", "describe", "split_loop"]

#: The C reference senders (:mod:`zcnet.bench.cref`) in the default lists: plain ``send`` and
#: ``send(MSG_ZEROCOPY)``.
DEFAULT_C_SEND_MODES: Final = ("c-copy", "c-zc")

#: The io_uring C reference senders: ``IORING_OP_SEND_ZC``, 32 per ``io_uring_enter``, from the
#: source buffer (``c-uring``) or from the same buffer registered once (``c-uring-fixed``), and
#: that with each batch's UDP sends linked (``IOSQE_IO_LINK``), in order whatever the kernel
#: must wait for, as zcnet's ``send_batch`` promises (``c-uring-fixed-linked``); and the first two
#: with one send per ``io_uring_enter``, as a program making one call per message
#: (``c-uring-single``, ``c-uring-fixed-single``: the references of zcnet's ``Sender.send``).
#: Asked for with ``--modes`` only (not in the default ``stream`` list nor in ``quick``).
URING_C_SEND_MODES: Final = ("c-uring", "c-uring-fixed", "c-uring-fixed-linked",
                             "c-uring-single", "c-uring-fixed-single")

#: zcnet's io_uring send engine (``SendPolicy(engine="io_uring")``): ``zcnet-uring`` is
#: ``Sender.send`` of each message (default policy otherwise); ``zcnet-uring-batch`` (UDP) is
#: ``Sender.send_batch`` of ``batch`` pool leases at a time, sent from registered memory;
#: ``zcnet-uring-leases`` is ``Sender.send`` of one pool lease per message, from registered memory.
ZCNET_URING_SEND_MODES: Final = ("zcnet-uring", "zcnet-uring-batch", "zcnet-uring-leases")

#: ``Sender.send`` of one :class:`zcnet.pool.BufferPool` lease per message (filled before the
#: timed window), TCP and UDP: on the ``MSG_ZEROCOPY`` engine (``zcnet-leases``) and on the
#: io_uring engine, the pool's slabs registered (``zcnet-uring-leases``). Asked for with
#: ``--modes`` only.
LEASE_SEND_MODES: Final = ("zcnet-leases", "zcnet-uring-leases")

#: Every io_uring mode, zcnet's and C's: asked for with ``--modes`` only.
URING_SEND_MODES: Final = (*ZCNET_URING_SEND_MODES, *URING_C_SEND_MODES)

#: The send modes asked for with ``--modes`` only: not in the default ``stream`` list nor in
#: ``quick``.
ASKED_SEND_MODES: Final = tuple(dict.fromkeys((*LEASE_SEND_MODES, *URING_SEND_MODES)))

#: Every C reference sender.
C_SEND_MODES: Final = (*DEFAULT_C_SEND_MODES, *URING_C_SEND_MODES)

#: The C reference receivers: ``recv`` into one buffer and TCP_ZEROCOPY_RECEIVE (tcp_mmap.c).
C_RECEIVE_MODES: Final = ("c-recv", "c-zerocopy")

#: ``sendall``: plain copies; ``zcnet``: Sender, default policy; ``zcnet-forced``: MSG_ZEROCOPY
#: on every send; ``raw-zerocopy``: the reference, MSG_ZEROCOPY with the least Python work
#: (see :mod:`zcnet.bench.senders`); ``zcnet-batch``: ``Sender.send_batch`` (sendmmsg), UDP only;
#: ``zcnet-leases``: ``Sender.send`` of pool leases (``zcnet-uring-leases`` on io_uring);
#: ``c-copy``/``c-zc``/``c-uring``/``c-uring-fixed``/``c-uring-fixed-linked``/``c-uring-single``/
#: ``c-uring-fixed-single``: the C loops.
SEND_MODES: Final = ("sendall", "zcnet", "zcnet-forced", "raw-zerocopy", "zcnet-batch",
                     "zcnet-leases", *ZCNET_URING_SEND_MODES, *C_SEND_MODES)

#: The send modes of ``zcnet bench quick``: all but the io_uring and the pool lease ones (the
#: io_uring ones take about 30 s more on 2 cores; ``zcnet bench stream --modes`` runs them).
QUICK_SEND_MODES: Final = tuple(m for m in SEND_MODES if m not in ASKED_SEND_MODES)

#: Send modes that only mean something on UDP (on TCP ``send_batch`` loops over ``send``).
UDP_ONLY_SEND_MODES: Final = ("zcnet-batch", "zcnet-uring-batch")

#: asyncio receive modes; each also runs on uvloop as ``NAME-uvloop``.
ASYNCIO_RECEIVE_MODES: Final = ("asyncio-readexactly", "asyncio-read", "asyncio-buffered",
                                "zcnet-aio")

#: Suffix of the uvloop variant of an asyncio receive mode.
UVLOOP_SUFFIX: Final = "-uvloop"

#: See :mod:`zcnet.bench.receivers`.
RECEIVE_MODES: Final = ("recv_into", "asyncio-readexactly", "asyncio-read", "zcnet",
                        "asyncio-buffered", "zcnet-aio",
                        *(m + UVLOOP_SUFFIX for m in ASYNCIO_RECEIVE_MODES), *C_RECEIVE_MODES)

#: Senders of the rx experiment: ``zcnet-forced`` (default: loopback pages mappable), ``zcnet``
#: (default policy) and ``sendall`` (plain copies: the receiver must fall back).
RX_SENDERS: Final = ("zcnet-forced", "zcnet", "sendall")


#: The rpc server's receive paths: name -> (``zerocopy_receive``, ``rx_policy``) of its runs:
#: ``recv_into``; zcnet Receivers mapping every request; zcnet Receivers with the default policy.
RPC_MODES: Final[dict[str, tuple[bool, str | None]]] = {
    "off": (False, None), "on": (True, "map"), "on-default": (True, "default")}

#: The memory experiment's send modes: plain copies and MSG_ZEROCOPY.
MEMORY_SEND_MODES: Final = ("copy", "zerocopy")

#: ``rpc --mmap-churn``'s receive variants -> the rpc server's ``rx_policy``: zcnet's Receiver
#: with long-lived windows, and the bench-only receiver mapping a fresh window per receive.
RPC_CHURN_VARIANTS: Final[dict[str, str]] = {"windows": "map", "fresh": "fresh"}
#: What runs beside that server: nothing, the mmap churn thread, or its control (as busy, no
#: mmap_lock).
RPC_CHURNS: Final = ("none", "mmap", "syscall")

#: The rxmem experiment's modes: hold mapped, hold copied, and mapped under an account limit
#: (the rest copied, or processed to make room).
RXMEM_MODES: Final = ("mapped", "copied", "limit-copy", "limit-wait")

#: The dask experiment's variants: Dask's ``tcp://``, zcnet's ``zc://``, and ``zc://`` with
#: zero-copy forced (:data:`zcnet.bench.dask.DASK_VARIANTS` has their settings).
DASK_VARIANT_NAMES: Final = ("tcp", "zc", "zc-forced")


def split_loop(mode: str) -> tuple[str, str | None]:
    """``"zcnet-aio-uvloop"`` -> ``("zcnet-aio", "uvloop")``; asyncio modes -> ``"asyncio"``;
    blocking modes -> ``None``."""
    base = mode[: -len(UVLOOP_SUFFIX)] if mode.endswith(UVLOOP_SUFFIX) else mode
    if base not in ASYNCIO_RECEIVE_MODES:
        return mode, None
    return base, "uvloop" if base != mode else "asyncio"


#: Every mode, variant and configuration of the experiments in words, for plots and reports
#: (:func:`describe`): send modes (stream), receive modes (rx), the rpc server's receive path,
#: the memory experiment's send modes and the dask variants.
MODE_WORDS: Final[dict[str, str]] = {
    # stream
    "sendall": "plain send (sendall)",
    "zcnet": "zcnet, default policy",
    "zcnet-forced": "zcnet, MSG_ZEROCOPY forced",
    "zcnet-batch": "zcnet send_batch (sendmmsg)",
    "raw-zerocopy": "bare MSG_ZEROCOPY loop",
    "zcnet-uring": "zcnet, io_uring engine",
    "zcnet-uring-batch": "zcnet io_uring send_batch",
    "zcnet-leases": "zcnet send of pool leases",
    "zcnet-uring-leases": "zcnet io_uring send of pool leases, registered",
    "c-copy": "C send (copy)",
    "c-zc": "C MSG_ZEROCOPY",
    "c-uring": "C io_uring SEND_ZC",
    "c-uring-fixed": "C io_uring SEND_ZC, registered",
    "c-uring-fixed-linked": "C io_uring SEND_ZC, registered, linked",
    "c-uring-single": "C io_uring SEND_ZC, one per enter",
    "c-uring-fixed-single": "C io_uring SEND_ZC, registered, one per enter",
    # rx ("zcnet" is the Receiver there: see RECEIVE_WORDS)
    "recv_into": "recv_into (copy)",
    "asyncio-readexactly": "asyncio readexactly",
    "asyncio-read": "asyncio read",
    "asyncio-buffered": "asyncio BufferedProtocol",
    "zcnet-aio": "zcnet asyncio stream",
    "c-recv": "C recv (copy)",
    "c-zerocopy": "C TCP_ZEROCOPY_RECEIVE",
    # rpc: the server's receive path
    "off": "recv_into (zero-copy receive off)",
    "on": "zcnet Receiver, mapping every request",
    "on-default": "zcnet Receiver, default policy",
    # rpc --mmap-churn: variant[+churn]
    "windows": "zcnet windows",
    "windows+mmap": "zcnet windows, mmap churn",
    "windows+syscall": "zcnet windows, control churn (no lock)",
    "fresh": "fresh window per receive",
    "fresh+mmap": "fresh window per receive, mmap churn",
    "fresh+syscall": "fresh window per receive, control churn (no lock)",
    # rxmem
    "mapped": "held mapped (zcnet Receiver)",
    "copied": "held copied (recv_into)",
    "limit-copy": "mapped up to the account limit, then copies",
    "limit-wait": "mapped up to the account limit, then waits",
    # memory
    "copy": "plain copy sends",
    "zerocopy": "MSG_ZEROCOPY sends",
    # dask
    "tcp": "Dask tcp://",
    "zc": "zcnet zc://",
    "zc-forced": "zcnet zc://, zero-copy forced",
}

#: Receive modes whose words differ from the send mode of the same name.
RECEIVE_WORDS: Final[dict[str, str]] = {"zcnet": "zcnet Receiver (TCP_ZEROCOPY_RECEIVE)"}


def describe(mode: str, *, receive: bool = False) -> str:
    """``mode`` in words (``receive``: a receive mode); an unknown name is returned as is,
    and the uvloop variant of an asyncio mode says so."""
    base, loop = split_loop(mode)
    words = (RECEIVE_WORDS.get(base) if receive else None) or MODE_WORDS.get(base, base)
    return f"{words} on uvloop" if loop == "uvloop" else words
