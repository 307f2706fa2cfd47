"""Options of the ``zc://`` backend, read from Dask's configuration.

Theory of operation: Dask propagates its configuration (files, ``DASK_*`` environment variables)
to worker processes, so the backend reads its knobs from ``dask.config`` under ``zcnet.dask``
each time a connection is made; ``dask.config.set`` in a test, or an environment variable such as
``DASK_ZCNET__DASK__FORCE_ZEROCOPY=1``, therefore reaches every process of a cluster.

``zcnet.dask.transport`` names the transport under the comm. Its only value is ``"aio"`` (a
:class:`zcnet.aio.ZcStream` per connection, the library's one send engine). ``"socket"`` selected
the backend's own send loop, which is gone: it is still accepted and means ``"aio"`` (the wire
format is the same, so a cluster whose configuration still says ``socket`` keeps working), with a
:class:`DeprecationWarning` and, since Python hides those outside ``__main__`` and Dask's worker
processes would never show it, one logged warning per process. Any other value is a
:class:`ValueError`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

__all__ = ["ZCOptions", "options_from_config"]

logger = logging.getLogger(__name__)

# zcnet.dask.transport: the transports there are, and removed ones with what they now mean
_TRANSPORTS = ("aio",)
_REMOVED_TRANSPORTS = {"socket": "aio"}
_warned: set[str] = set()

@dataclass(frozen=True, slots=True)
class ZCOptions:
    """Knobs of one ``zc://`` connection.

    Attributes:
        zerocopy_threshold: frames of at least this many bytes are sent alone, with
            ``MSG_ZEROCOPY`` while the socket is in zero-copy mode; smaller frames are gathered
            into one copying send (zero-copy costs more than a copy below ~10 KB).
        force_zerocopy: keep ``MSG_ZEROCOPY`` even after the kernel reports it copied
            (loopback always copies; forcing only makes sense to exercise the path).
        zerocopy: use ``MSG_ZEROCOPY`` at all.
        drain_timeout: seconds a graceful close waits for outstanding completions, and lets
            the comm's queued messages go without progress; sends still pending (or queued)
            after that are cut off by resetting the connection.
    """

    zerocopy_threshold: int = 64 * 1024
    force_zerocopy: bool = False
    zerocopy: bool = True
    drain_timeout: float = 5.0


def _as_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _check_transport(name: str) -> None:
    """Accept ``zcnet.dask.transport`` = ``name`` (warning for a removed one) or raise."""
    if name in _TRANSPORTS:
        return
    if name in _REMOVED_TRANSPORTS:
        msg = (f"zcnet.dask.transport {name!r} was removed (the zc:// backend has one transport, "
               f"on zcnet.aio); using {_REMOVED_TRANSPORTS[name]!r}. Drop the setting.")
        warnings.warn(msg, DeprecationWarning, stacklevel=3)
        if name not in _warned:
            _warned.add(name)
            logger.warning("%s", msg)
        return
    raise ValueError(f"zcnet.dask.transport must be 'aio', not {name!r}")


def options_from_config() -> ZCOptions:
    """The options currently set in ``dask.config`` under ``zcnet.dask`` (defaults otherwise)."""
    import dask.config
    from dask.utils import parse_bytes, parse_timedelta

    d = ZCOptions()
    get = dask.config.get
    threshold = get("zcnet.dask.zerocopy-threshold", default=d.zerocopy_threshold)
    _check_transport(str(get("zcnet.dask.transport", default="aio")))
    drain = parse_timedelta(get("zcnet.dask.drain-timeout", default=d.drain_timeout), "seconds")
    return ZCOptions(
        zerocopy_threshold=int(parse_bytes(threshold)) if isinstance(threshold, str)
        else int(threshold),
        force_zerocopy=_as_bool(get("zcnet.dask.force-zerocopy", default=d.force_zerocopy)),
        zerocopy=_as_bool(get("zcnet.dask.zerocopy", default=d.zerocopy)),
        drain_timeout=float(drain if drain is not None else d.drain_timeout),
    )
