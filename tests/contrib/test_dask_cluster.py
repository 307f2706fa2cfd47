"""A real LocalCluster over zc:// with worker processes, moving tens of MB between workers.

Worker processes find the backend through the ``distributed.comm.backends`` entry point of the
installed package; every array is checked byte for byte where it arrives and back at the client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

import dask
import numpy as np
import pytest

from tests.conftest import ZEROCOPY_SKIP
from zcnet._core.pattern import StreamPattern

pytestmark = pytest.mark.skipif(
    not list(entry_points(group="distributed.comm.backends", name="zc")),
    reason="the zc entry point is not installed (pip install -e .[dask])",
)

MB = 1024 * 1024
BLOCK = 8 * MB


def make_array(offset: int, nbytes: int) -> np.ndarray:
    """The pattern stream's bytes at ``offset`` as a writeable uint8 array (runs on a worker)."""
    pattern = StreamPattern(max_block=BLOCK)
    out = np.empty(nbytes, dtype="u1")
    for pos in range(0, nbytes, BLOCK):
        n = min(BLOCK, nbytes - pos)
        out[pos : pos + n] = np.frombuffer(pattern.block(offset + pos, n), dtype="u1")
    return out


def verify(arr: np.ndarray, offset: int) -> str:
    """Check every byte against the pattern; return the array's digest (runs on a worker)."""
    if not StreamPattern(max_block=BLOCK).matches(offset, memoryview(arr)):
        raise AssertionError(f"array at offset {offset} corrupted in transit")
    return hashlib.sha256(memoryview(arr)).hexdigest()


def combine(*arrays: np.ndarray) -> np.ndarray:
    """Concatenate arrays that come from the other worker (forces the transfers)."""
    return np.concatenate(arrays)


@pytest.fixture(params=[False, True], ids=["default", "forced-zerocopy"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    force = request.param
    if force and ZEROCOPY_SKIP:
        pytest.skip(ZEROCOPY_SKIP)
    with dask.config.set({"zcnet.dask.force-zerocopy": force,
                          "distributed.worker.memory.target": False,
                          "distributed.worker.memory.spill": False}), \
         LocalCluster(protocol="zc://", host="127.0.0.1", processes=True, n_workers=2,
                      threads_per_worker=1,
                      dashboard_address=None, memory_limit="2GiB",
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as lc, \
         Client(lc) as client:
        client.zc_forced = force  # type: ignore[attr-defined]
        yield client


def test_local_cluster_moves_arrays_between_workers(cluster: Any) -> None:
    client = cluster
    assert client.scheduler.address.startswith("zc://")
    workers = sorted(client.scheduler_info()["workers"])
    assert len(workers) == 2 and all(w.startswith("zc://") for w in workers)
    a, b = workers

    sizes = [24 * MB + 3, 16 * MB, 40_000, 1]
    offsets = [i * 1009 for i in range(len(sizes))]
    # made on a, checked on b (transfers a -> b), then combined on a (b -> a)
    made = [client.submit(make_array, off, n, workers=[a], pure=False)
            for off, n in zip(offsets, sizes, strict=True)]
    on_b = [client.submit(verify, m, off, workers=[b])
            for m, off in zip(made, offsets, strict=True)]
    digests = client.gather(on_b)
    for off, n, digest in zip(offsets, sizes, digests, strict=True):
        assert digest == hashlib.sha256(make_array(off, n)).hexdigest()

    moved = [client.submit(np.copy, m, workers=[b], pure=False) for m in made]
    joined = client.submit(combine, *moved, workers=[a])
    result = joined.result()
    expected = np.concatenate([make_array(off, n) for off, n in zip(offsets, sizes, strict=True)])
    assert result.nbytes == expected.nbytes
    assert np.array_equal(result, expected)

    from zcnet.contrib.dask import process_stats

    stats = client.run(process_stats)
    for w in (a, b):
        assert stats[w]["bytes_sent"] > sum(sizes)  # each array left its worker once at least
        assert stats[w]["bytes_zerocopy"] > 0  # the first large frames went out with MSG_ZEROCOPY
        if client.zc_forced:
            # Forced zero-copy never falls back, so both large arrays left each worker with
            # MSG_ZEROCOPY (the default policy stops after the first copied completion, a few MB
            # in). The number of send calls is no measure of that: a non-blocking send queues
            # what the socket buffer takes, so the count follows how fast the peer reads and
            # varies threefold between runs moving the same bytes.
            assert stats[w]["bytes_zerocopy"] >= sizes[0] + sizes[1], stats[w]


def test_dask_array_shuffle_over_zc(cluster: Any) -> None:
    import dask.array as da

    client = cluster
    rows, cols = 4096, 2048  # 64 MiB of int64, made on the workers
    x = (da.arange(rows * cols, dtype="i8", chunks=rows * cols // 8).reshape(rows, cols) % 1009)
    x = client.persist(x.rechunk((512, cols)))  # spread over both workers
    y = (x.T @ x[:, :16]).rechunk((256, 16))  # all-to-all transfers of MB-sized blocks
    z = x.T.rechunk((cols, 512))  # a full transpose shuffle, 64 MiB moved around
    got_y, got_z = client.compute([y, z], sync=True)
    ref = np.arange(rows * cols, dtype="i8").reshape(rows, cols) % 1009
    assert np.array_equal(got_y, ref.T @ ref[:, :16])  # integers: exact
    assert np.array_equal(got_z, ref.T)
