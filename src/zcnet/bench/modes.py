"""Names of the benchmark's send and receive modes (no imports, so the CLI parser stays light)."""

from __future__ import annotations

from typing import Final

__all__ = ["RECEIVE_MODES", "RX_SENDERS", "SEND_MODES", "UDP_ONLY_SEND_MODES"]

#: ``sendall``: plain copies; ``zcnet``: Sender, default policy; ``zcnet-forced``: MSG_ZEROCOPY
#: on every send; ``raw-zerocopy``: the reference, MSG_ZEROCOPY with the least Python work
#: (see :mod:`zcnet.bench.senders`); ``zcnet-batch``: ``Sender.send_batch`` (sendmmsg), UDP only.
SEND_MODES: Final = ("sendall", "zcnet", "zcnet-forced", "raw-zerocopy", "zcnet-batch")

#: Send modes that only mean something on UDP (on TCP ``send_batch`` loops over ``send``).
UDP_ONLY_SEND_MODES: Final = ("zcnet-batch",)

#: See :mod:`zcnet.bench.receivers`.
RECEIVE_MODES: Final = ("recv_into", "asyncio-readexactly", "asyncio-read", "zcnet")

#: Senders of the rx experiment: ``zcnet-forced`` (default: loopback pages mappable), ``zcnet``
#: (default policy) and ``sendall`` (plain copies: the receiver must fall back).
RX_SENDERS: Final = ("zcnet-forced", "zcnet", "sendall")
