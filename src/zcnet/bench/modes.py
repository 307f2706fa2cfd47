"""Names of the benchmark's send and receive modes (no imports, so the CLI parser stays light)."""

from __future__ import annotations

from typing import Final

__all__ = ["ASYNCIO_RECEIVE_MODES", "C_RECEIVE_MODES", "C_SEND_MODES", "RECEIVE_MODES",
           "RX_SENDERS", "SEND_MODES", "UDP_ONLY_SEND_MODES", "UVLOOP_SUFFIX", "split_loop"]

#: The C reference senders (:mod:`zcnet.bench.cref`): plain ``send`` and ``send(MSG_ZEROCOPY)``.
C_SEND_MODES: Final = ("c-copy", "c-zc")

#: The C reference receivers: ``recv`` into one buffer and TCP_ZEROCOPY_RECEIVE (tcp_mmap.c).
C_RECEIVE_MODES: Final = ("c-recv", "c-zerocopy")

#: ``sendall``: plain copies; ``zcnet``: Sender, default policy; ``zcnet-forced``: MSG_ZEROCOPY
#: on every send; ``raw-zerocopy``: the reference, MSG_ZEROCOPY with the least Python work
#: (see :mod:`zcnet.bench.senders`); ``zcnet-batch``: ``Sender.send_batch`` (sendmmsg), UDP only;
#: ``c-copy``/``c-zc``: the C reference loops.
SEND_MODES: Final = ("sendall", "zcnet", "zcnet-forced", "raw-zerocopy", "zcnet-batch",
                     *C_SEND_MODES)

#: Send modes that only mean something on UDP (on TCP ``send_batch`` loops over ``send``).
UDP_ONLY_SEND_MODES: Final = ("zcnet-batch",)

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
