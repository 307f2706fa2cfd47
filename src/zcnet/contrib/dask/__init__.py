"""A zero-copy comm backend for Dask distributed, under the ``zc://`` scheme.

Install with ``pip install zcnet[dask]``; the ``distributed.comm.backends`` entry point
``zc = zcnet.contrib.dask:ZCBackend`` makes ``Scheduler(protocol="zc://")``,
``LocalCluster(protocol="zc://")`` and ``dask scheduler --protocol zc`` use it. Knobs live in
``dask.config`` under ``zcnet.dask`` (see :class:`ZCOptions`). Importing this package imports
``distributed``.
"""

from __future__ import annotations

from zcnet.contrib.dask.aio_transport import AioTransport
from zcnet.contrib.dask.backend import PREFIX, ZCBackend, ZCComm, ZCConnector, ZCListener
from zcnet.contrib.dask.config import ZCOptions, options_from_config
from zcnet.contrib.dask.stats import process_stats
from zcnet.contrib.dask.transport import FrameTransport, TransportStats

__all__ = [
    "PREFIX",
    "AioTransport",
    "FrameTransport",
    "TransportStats",
    "ZCBackend",
    "ZCComm",
    "ZCConnector",
    "ZCListener",
    "ZCOptions",
    "options_from_config",
    "process_stats",
]
