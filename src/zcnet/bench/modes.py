"""Names of the benchmark's send and receive modes (no imports, so the CLI parser stays light)."""

from __future__ import annotations

from typing import Final

__all__ = ["ASYNCIO_RECEIVE_MODES", "C_RECEIVE_MODES", "C_SEND_MODES", "DEFAULT_C_SEND_MODES",
           "QUICK_SEND_MODES", "RECEIVE_MODES", "RX_SENDERS", "SEND_MODES",
           "UDP_ONLY_SEND_MODES", "URING_C_SEND_MODES", "URING_SEND_MODES", "UVLOOP_SUFFIX",
           "ZCNET_URING_SEND_MODES", "split_loop"]

#: The C reference senders (:mod:`zcnet.bench.cref`) in the default lists: plain ``send`` and
#: ``send(MSG_ZEROCOPY)``.
DEFAULT_C_SEND_MODES: Final = ("c-copy", "c-zc")

#: The io_uring C reference senders: ``IORING_OP_SEND_ZC``, 32 per ``io_uring_enter``, from the
#: source buffer (``c-uring``) or from the same buffer registered once (``c-uring-fixed``), and
#: that with each batch's UDP sends linked (``IOSQE_IO_LINK``), in order whatever the kernel
#: must wait for, as zcnet's ``send_batch`` promises (``c-uring-fixed-linked``).
#: Asked for with ``--modes`` only (not in the default ``stream`` list nor in ``quick``).
URING_C_SEND_MODES: Final = ("c-uring", "c-uring-fixed", "c-uring-fixed-linked")

#: zcnet's io_uring send engine (``SendPolicy(engine="io_uring")``): ``zcnet-uring`` is
#: ``Sender.send`` of each message (default policy otherwise); ``zcnet-uring-batch`` (UDP) is
#: ``Sender.send_batch`` of ``batch`` pool leases at a time, sent from registered memory.
ZCNET_URING_SEND_MODES: Final = ("zcnet-uring", "zcnet-uring-batch")

#: Every io_uring mode, zcnet's and C's: asked for with ``--modes`` only.
URING_SEND_MODES: Final = (*ZCNET_URING_SEND_MODES, *URING_C_SEND_MODES)

#: Every C reference sender.
C_SEND_MODES: Final = (*DEFAULT_C_SEND_MODES, *URING_C_SEND_MODES)

#: The C reference receivers: ``recv`` into one buffer and TCP_ZEROCOPY_RECEIVE (tcp_mmap.c).
C_RECEIVE_MODES: Final = ("c-recv", "c-zerocopy")

#: ``sendall``: plain copies; ``zcnet``: Sender, default policy; ``zcnet-forced``: MSG_ZEROCOPY
#: on every send; ``raw-zerocopy``: the reference, MSG_ZEROCOPY with the least Python work
#: (see :mod:`zcnet.bench.senders`); ``zcnet-batch``: ``Sender.send_batch`` (sendmmsg), UDP only;
#: ``c-copy``/``c-zc``/``c-uring``/``c-uring-fixed``/``c-uring-fixed-linked``: the C loops.
SEND_MODES: Final = ("sendall", "zcnet", "zcnet-forced", "raw-zerocopy", "zcnet-batch",
                     *ZCNET_URING_SEND_MODES, *C_SEND_MODES)

#: The send modes of ``zcnet bench quick``: all but the io_uring ones (about 30 s more on 2
#: cores; ``zcnet bench stream --modes`` runs them).
QUICK_SEND_MODES: Final = tuple(m for m in SEND_MODES if m not in URING_SEND_MODES)

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


def split_loop(mode: str) -> tuple[str, str | None]:
    """``"zcnet-aio-uvloop"`` -> ``("zcnet-aio", "uvloop")``; asyncio modes -> ``"asyncio"``;
    blocking modes -> ``None``."""
    base = mode[: -len(UVLOOP_SUFFIX)] if mode.endswith(UVLOOP_SUFFIX) else mode
    if base not in ASYNCIO_RECEIVE_MODES:
        return mode, None
    return base, "uvloop" if base != mode else "asyncio"
