"""The zcnet benchmark: ``zcnet bench {stream,rx,rpc,memory,quick}`` and ``zcnet serve``.

Theory of operation: every experiment runs its sender and receiver in separate processes (the
``fork`` multiprocessing context), each measuring its own CPU with ``getrusage(RUSAGE_SELF)``
around the transfer only, inside a network namespace the benchmark creates and deletes
(:class:`zcnet.netns.Netns`; lo MTU 61512 so the IPv6 MSS is 15 pages, an ``ifb`` sink for true
transmit cost). Repetitions alternate modes; reports give medians with min and max and quote ratios.
See docs/bench.md. rich and matplotlib (the ``[bench]`` extra) are imported lazily.
"""

from __future__ import annotations

__all__: list[str] = []
