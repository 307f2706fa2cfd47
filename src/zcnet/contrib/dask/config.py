"""Options of the ``zc://`` backend, read from Dask's configuration.

Theory of operation: Dask propagates its configuration (files, ``DASK_*`` environment variables)
to worker processes, so the backend reads its knobs from ``dask.config`` under ``zcnet.dask``
each time a connection is made; ``dask.config.set`` in a test, or an environment variable such as
``DASK_ZCNET__DASK__FORCE_ZEROCOPY=1``, therefore reaches every process of a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ZCOptions", "options_from_config"]

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
        drain_timeout: seconds a graceful close waits for outstanding completions.
        transport: ``"aio"`` (a :class:`zcnet.aio.ZcStream` per connection, the default) or
            ``"socket"`` (the backend's own minimal transport, kept as a fallback).
    """

    zerocopy_threshold: int = 64 * 1024
    force_zerocopy: bool = False
    zerocopy: bool = True
    drain_timeout: float = 5.0
    transport: str = "aio"


def _as_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def options_from_config() -> ZCOptions:
    """The options currently set in ``dask.config`` under ``zcnet.dask`` (defaults otherwise)."""
    import dask.config
    from dask.utils import parse_bytes, parse_timedelta

    d = ZCOptions()
    get = dask.config.get
    threshold = get("zcnet.dask.zerocopy-threshold", default=d.zerocopy_threshold)
    transport = str(get("zcnet.dask.transport", default=d.transport))
    if transport not in ("aio", "socket"):
        raise ValueError(f"zcnet.dask.transport must be 'aio' or 'socket', not {transport!r}")
    drain = parse_timedelta(get("zcnet.dask.drain-timeout", default=d.drain_timeout), "seconds")
    return ZCOptions(
        zerocopy_threshold=int(parse_bytes(threshold)) if isinstance(threshold, str)
        else int(threshold),
        force_zerocopy=_as_bool(get("zcnet.dask.force-zerocopy", default=d.force_zerocopy)),
        zerocopy=_as_bool(get("zcnet.dask.zerocopy", default=d.zerocopy)),
        drain_timeout=float(drain if drain is not None else d.drain_timeout),
        transport=transport,
    )
