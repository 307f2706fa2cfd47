"""The plot's data-to-panels step with made-up reports, and the PNG it draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zcnet.bench import plot
from zcnet.bench.plot import Bar, Group, Panel, panels, relative_bar


def _stat(median: float, lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"median": median, "min": median if lo is None else lo,
            "max": median if hi is None else hi, "n": 3}


def _exp(name: str, summary: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    exp = {"name": name, "status": "ok", "reason": None,
           "environment": {"netns": True, "host": "::1", "lo_mtu": 61512, "ifb_sink": None,
                           "notes": []},
           "parameters": {}, "runs": [], "summary": summary, "notes": []}
    exp.update(extra)
    return exp


def _report(*experiments: dict[str, Any]) -> dict[str, Any]:
    return {"schema_version": 1, "generator": "zcnet bench", "zcnet_version": "0",
            "created_utc": "", "command": None,
            "machine": {"kernel": "6.18", "system": "Linux", "cpu": "Test CPU", "nproc": 2,
                        "python": "3.11.7", "zcnet_implementation": "c",
                        "zcnet_implementation_reason": "", "root": True},
            "parameters": {"experiment": "quick"}, "experiments": list(experiments)}


def _stream_row(transport: str, size: int, mode: str, cpu: dict[str, Any] | None
                ) -> dict[str, Any]:
    return {"transport": transport, "msg_size": size, "send_mode": mode,
            "metrics": {} if cpu is None else {"sender_cpu_s_per_gb": cpu}}


def test_stream_panels_are_ratios_to_sendall_with_the_c_rows_hatched() -> None:
    summary = [
        _stream_row("udp", 65536, "c-zc", _stat(0.05)),   # out of the vocabulary's order
        _stream_row("udp", 65536, "zcnet", _stat(0.08, 0.06, 0.12)),
        _stream_row("udp", 65536, "sendall", _stat(0.1, 0.09, 0.2)),
        _stream_row("udp", 65536, "c-uring", None),       # unavailable: no figures, no bar
    ]
    (panel,) = panels(_report(_exp("stream", summary)))  # no TCP rows: no TCP panel
    assert panel.experiment == "stream" and "UDP" in panel.title
    assert panel.baseline == "plain send (sendall) = 1"
    (group,) = panel.groups
    assert group.label == "64 KiB"
    assert [b.mode for b in group.bars] == ["zcnet", "c-zc"]
    zcnet, c_zc = group.bars
    assert (zcnet.ratio, zcnet.low, zcnet.high) == pytest.approx((0.8, 0.6, 1.2))
    assert zcnet.words == "zcnet, default policy" and not zcnet.reference
    assert c_zc.reference and c_zc.words == "C MSG_ZEROCOPY"
    assert c_zc.ratio == pytest.approx(0.5)


def test_stream_tcp_bars_carry_the_receivers_ratio_as_a_marker() -> None:
    rows = [_stream_row("tcp", 1 << 20, "sendall", _stat(0.4)),
            _stream_row("tcp", 1 << 20, "zcnet-forced", _stat(0.1)),
            _stream_row("tcp", 1 << 20, "c-zc", _stat(0.2))]
    rows[0]["metrics"]["receiver_cpu_s_per_gb"] = _stat(0.5)
    rows[1]["metrics"]["receiver_cpu_s_per_gb"] = _stat(1.5)  # the copy moved to the receiver
    (panel,) = panels(_report(_exp("stream", rows)))
    assert panel.marker_label is not None and "receiver" in panel.marker_label
    forced, c_zc = panel.groups[0].bars
    assert panel.groups[0].label == "1 MiB"
    assert (forced.ratio, forced.marker) == pytest.approx((0.25, 3.0))
    assert c_zc.marker is None  # no receiver figure in that row
    udp = [_stream_row("udp", 4096, "sendall", _stat(1.0)), _stream_row("udp", 4096, "zcnet",
                                                                         _stat(2.0))]
    (panel,) = panels(_report(_exp("stream", udp)))
    assert panel.marker_label is None and panel.groups[0].bars[0].marker is None


def test_a_size_without_its_baseline_has_no_group() -> None:
    summary = [_stream_row("tcp", 4096, "zcnet", _stat(1.0)),
               _stream_row("tcp", 16384, "sendall", _stat(0.5)),
               _stream_row("tcp", 16384, "zcnet", _stat(1.0))]
    (panel,) = panels(_report(_exp("stream", summary)))
    assert [g.label for g in panel.groups] == ["16 KiB"]
    assert panel.groups[0].bars[0].ratio == pytest.approx(2.0)


def test_experiments_without_results_give_no_panel() -> None:
    skipped = _exp("dask", [], status="skipped", reason="distributed is not installed")
    nothing = _exp("rpc", [{"zerocopy_receive": False, "rx_policy": None, "metrics": {}}])
    assert panels(_report(skipped, nothing, _exp("memory", []))) == []
    assert panels(_report(_exp("no-such-experiment", [{"metrics": {"x": _stat(1)}}]))) == []


def test_rx_rpc_memory_and_dask_panels() -> None:
    rx = _exp("rx", [
        {"recv_mode": "zcnet", "metrics": {"receiver_cpu_s_per_gb": _stat(0.1)}},
        {"recv_mode": "recv_into", "metrics": {"receiver_cpu_s_per_gb": _stat(0.2)}},
        {"recv_mode": "zcnet-aio-uvloop", "metrics": {"receiver_cpu_s_per_gb": _stat(0.5)}},
        {"recv_mode": "c-zerocopy", "metrics": {"receiver_cpu_s_per_gb": _stat(0.05)}},
    ], runs=[{"ok": True, "send_mode": "zcnet-forced"}])
    rpc = _exp("rpc", [
        {"zerocopy_receive": False, "rx_policy": None,
         "metrics": {"server_cpu_us_per_req": _stat(10.0), "requests_per_s": _stat(1000.0)}},
        {"zerocopy_receive": True, "rx_policy": "map",
         "metrics": {"server_cpu_us_per_req": _stat(16.0), "requests_per_s": _stat(900.0)}},
    ], parameters={"connections": 100, "size": 4096})
    memory = _exp("memory", [
        {"send_mode": "copy", "metrics": {"sockstat_tcp_mem_mb": _stat(9.0),
                                          "cgroup_sock_mb": _stat(0.0)}},
        {"send_mode": "zerocopy", "metrics": {"sockstat_tcp_mem_mb": _stat(0.0),
                                              "cgroup_sock_mb": _stat(0.0)}},
    ])
    dask = _exp("dask", [{"variant": "tcp", "metrics": {"throughput_gbit_s": _stat(20.0)}},
                         {"variant": "zc", "metrics": {"throughput_gbit_s": _stat(25.0)}}],
                parameters={"arrays": 2, "array_bytes": 16 << 20})
    # the page follows PANEL_BUILDERS, whatever order the report has
    got = panels(_report(dask, memory, rpc, rx))
    assert [p.experiment for p in got] == ["rx", "rpc", "memory", "dask"]
    rx_panel, rpc_panel, mem_panel, dask_panel = got
    (group,) = rx_panel.groups
    assert [(b.mode, b.ratio, b.reference) for b in group.bars] == [
        ("zcnet", 0.5, False), ("zcnet-aio-uvloop", 2.5, False), ("c-zerocopy", 0.25, True)]
    assert group.bars[0].words == "zcnet Receiver (TCP_ZEROCOPY_RECEIVE)"
    assert group.bars[1].words == "zcnet asyncio stream on uvloop"
    assert "sender zcnet-forced" in rx_panel.title and "lo MTU 61512" in rx_panel.title
    assert [(g.label, [(b.mode, b.ratio) for b in g.bars]) for g in rpc_panel.groups] == [
        ("server CPU per request", [("on", 1.6)]), ("requests per second", [("on", 0.9)])]
    # a zero baseline (cgroup: 0 MB) gives no ratio, hence no group
    assert [(g.label, g.bars[0].ratio) for g in mem_panel.groups] == [
        ("TCP memory charged\n(stall)", 0.0)]
    assert dask_panel.groups[0].bars[0] == Bar("zc", "zcnet zc://", 1.25, 1.25, 1.25)
    assert "16 MiB" in dask_panel.title


def test_a_new_experiment_needs_only_its_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    def rxmem(exp: Any) -> list[Panel]:
        base = exp["summary"][0]["metrics"]["mb"]["median"]
        bar = relative_bar(exp["summary"][1], "mb", base, "zcnet", "zcnet Receiver")
        assert bar is not None
        return [Panel("rxmem", "rxmem", "ratio", "copy = 1", (Group("peak", (bar,)),))]

    monkeypatch.setitem(plot.PANEL_BUILDERS, "rxmem", rxmem)
    exp = _exp("rxmem", [{"metrics": {"mb": _stat(4.0)}}, {"metrics": {"mb": _stat(1.0)}}])
    (panel,) = panels(_report(exp))
    assert panel.groups[0].bars[0].ratio == 0.25
    assert relative_bar({"metrics": {}}, "mb", 1.0, "m", "w") is None
    assert relative_bar({"metrics": {"mb": _stat(1.0)}}, "mb", 0.0, "m", "w") is None


def test_write_plot_draws_a_png_even_without_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the [bench] extra (matplotlib) is not installed")
    summary = [_stream_row("tcp", 4096, "sendall", _stat(1.0)),
               _stream_row("tcp", 4096, "zcnet", _stat(1.1, 0.9, 1.3)),
               _stream_row("tcp", 65536, "sendall", _stat(0.5)),
               _stream_row("tcp", 65536, "zcnet", _stat(0.4))]
    for name, report in (("one.png", _report(_exp("stream", summary))), ("none.png", _report())):
        path = tmp_path / name
        plot.write_plot(report, str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
