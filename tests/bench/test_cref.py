"""The C reference loops (zcnet.bench.cref) and ``--profile``.

Every run here moves a few MB and checks every byte (``--verify all``: the C receivers compare
each byte with the pattern; the C senders' bytes are checked by the Python receiver). No timing
is asserted. The io_uring senders (``c-uring``, ``c-uring-fixed``) are skipped, with the
program's reason, where io_uring or IORING_OP_SEND_ZC is unavailable.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from zcnet.bench import cref
from zcnet.bench.cli import main
from zcnet.bench.profile import parse_report, perf_unavailable_reason

pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")

TINY = ["--bytes", "2M", "--warmup", "256K", "--reps", "1", "--verify", "all", "--source", "8M",
        "--no-progress", "--no-table"]


def _built() -> cref.CBuild:
    built = cref.build(refresh=True)
    if not built.available:
        pytest.skip(f"no C reference here: {built.reason}")
    return built


def _experiment(path: Path) -> dict[str, Any]:
    exp: dict[str, Any] = json.loads(path.read_text())["experiments"][0]
    return exp


def test_pattern_period_matches_the_stream_pattern() -> None:
    from zcnet.bench.pattern import PERIOD, Verifier

    period = cref.pattern_period()
    assert len(period) == PERIOD
    assert period == Verifier().window(0, PERIOD).tobytes()


def test_c_senders_move_verified_bytes(tmp_path: Path) -> None:
    built = _built()
    out = tmp_path / "s.json"
    assert main(["stream", "--modes", "sendall,zcnet-forced,c-copy,c-zc", "--sizes", "64K",
                 *TINY, "--json", str(out)]) == 0
    exp = _experiment(out)
    assert exp["c_reference"]["available"] and exp["c_reference"]["programs"] == built.programs
    c_runs = [r for r in exp["runs"] if r["send_mode"] in ("c-copy", "c-zc")]
    assert {r["send_mode"] for r in c_runs} == {"c-copy", "c-zc"}
    for run in c_runs:
        assert run["ok"], run["error"]
        if run["transport"] == "tcp":  # the Python receiver checked every byte
            assert run["receiver"]["verified"] == "full"
            assert run["receiver"]["bytes"] == 2 << 20
            assert run["sender"]["bytes"] == 2 << 20
            assert run["sender"]["source_bytes"] == 8 << 20
        if run["send_mode"] == "c-zc":
            assert run["sender"]["completions"] >= 1
    by_mode = {(e["transport"], e["send_mode"]): e for e in exp["summary"]}
    assert by_mode[("tcp", "sendall")]["c_reference"] == "c-copy"
    assert by_mode[("tcp", "zcnet-forced")]["c_reference"] == "c-zc"
    assert by_mode[("tcp", "c-zc")]["c_reference"] is None
    for key in (("tcp", "sendall"), ("tcp", "zcnet-forced")):
        assert by_mode[key]["sender_cpu_vs_c_pct"] is not None


def test_c_receivers_move_verified_bytes(tmp_path: Path) -> None:
    _built()
    out = tmp_path / "r.json"
    assert main(["rx", "--recv-modes", "recv_into,zcnet,c-recv,c-zerocopy", *TINY,
                 "--json", str(out)]) == 0
    exp = _experiment(out)
    runs = {r["recv_mode"]: r for r in exp["runs"]}
    for mode in ("c-recv", "c-zerocopy"):
        run = runs[mode]
        assert run["ok"], run["error"]
        rcv = run["receiver"]
        assert rcv["verified"] == "full" and rcv["bytes"] == 2 << 20
        assert rcv["bytes_mapped"] + rcv["bytes_copied"] == 2 << 20
    if exp["environment"]["netns"]:  # lo MTU 61512 and a MSG_ZEROCOPY sender: pages map
        assert runs["c-zerocopy"]["receiver"]["bytes_mapped"] > 0
    summary = {e["recv_mode"]: e for e in exp["summary"]}
    assert summary["recv_into"]["c_reference"] == "c-recv"
    assert summary["recv_into"]["receiver_cpu_vs_c_pct"] is not None
    assert summary["zcnet"]["c_reference"] in ("c-zerocopy", "c-recv")
    assert "receiver_cpu_vs_c_pct" in summary["zcnet"]


def test_spot_checking_c_receiver_and_bad_bytes(tmp_path: Path) -> None:
    """Timed repetitions spot-check; a stream that is not the pattern fails verification."""
    import socket
    import threading

    built = _built()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    data = bytearray(cref.pattern_period() * 4)
    data[70000] ^= 0xFF  # one wrong byte in the timed part

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(data)

    t = threading.Thread(target=send)
    t.start()
    conn, _ = listener.accept()
    with conn, listener:
        res = cref.run_receiver(built.programs["recv"], conn, zerocopy=False, warmup=4096,
                                nbytes=len(data) - 4096, recv_size=65536, rcvlowat=0, full=True)
    t.join()
    assert not res["ok"] and "differ from the pattern" in res["error"]


def test_no_compiler_gives_rows_with_a_reason(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "zcnet-no-such-cc")
    try:
        built = cref.build(refresh=True)
        assert not built.available and "not found" in str(built.reason)
        out = tmp_path / "s.json"
        assert main(["stream", "--modes", "sendall,c-copy,c-zc", "--sizes", "64K",
                     "--transports", "tcp", *TINY, "--json", str(out)]) == 0
        exp = _experiment(out)
        assert exp["c_reference"]["available"] is False
        assert "not found" in exp["c_reference"]["reason"]
        rows = {e["send_mode"]: e for e in exp["summary"]}
        assert "not found" in rows["c-copy"]["unavailable"]
        assert rows["c-zc"]["metrics"] == {}
        assert rows["sendall"]["c_reference"] == "c-copy"
        assert rows["sendall"]["sender_cpu_vs_c_pct"] is None
        assert all(r["send_mode"] == "sendall" and r["ok"] for r in exp["runs"])
        out = tmp_path / "r.json"
        assert main(["rx", "--recv-modes", "recv_into,c-recv", *TINY, "--json", str(out)]) == 0
        rows = {e["recv_mode"]: e for e in _experiment(out)["summary"]}
        assert "not found" in rows["c-recv"]["unavailable"]
        from zcnet.bench.report import build_report, print_tables

        print_tables(build_report([_experiment(out)], {}))  # renders "unavailable: ..."
    finally:
        monkeypatch.delenv("CC")
        cref.build(refresh=True)


def test_failing_compiler_gives_a_reason(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        built = cref.build(refresh=True)
        assert not built.available and "failed" in str(built.reason)
    finally:
        monkeypatch.delenv("CC")
        cref.build(refresh=True)


def test_parse_report() -> None:
    text = ("# Samples: 1K of event 'cpu-clock'\n#\n# Overhead  Symbol\n"
            "    41.20%  [k] _copy_from_iter\n     9.00%  [.] main\n\n")
    out = parse_report(text)
    assert out["samples"] == "1K"
    assert out["top"][0] == {"symbol": "_copy_from_iter", "pct": 41.2, "kernel": True}
    assert out["top"][1]["kernel"] is False


def test_profile_gives_top_symbols(tmp_path: Path) -> None:
    reason = perf_unavailable_reason()
    if reason is not None:
        pytest.skip(f"--profile needs perf: {reason}")
    _built()
    out = tmp_path / "r.json"
    assert main(["rx", "--recv-modes", "recv_into,c-recv", *TINY, "--bytes", "256M", "--profile",
                 "--json", str(out)]) == 0
    exp = _experiment(out)
    assert exp["profile_unavailable"] is None
    assert {p["recv_mode"] for p in exp["profiles"]} == {"recv_into", "c-recv"}
    for prof in exp["profiles"]:
        assert prof["ok"], prof["error"]
        rcv = prof["receiver"]
        assert rcv["error"] is None and rcv["top"], rcv
        assert all(0 < e["pct"] <= 100 for e in rcv["top"])
    # profiled repetitions are not timed ones
    assert all(r["role"] != "profile" for r in exp["runs"])


# -- io_uring senders ------------------------------------------------------------------------

URING = ("c-uring", "c-uring-fixed", "c-uring-fixed-linked", "c-uring-single",
         "c-uring-fixed-single")


def _skip_without_uring(exp: dict[str, Any]) -> None:
    """Skip when the experiment's io_uring rows say the mode cannot run here."""
    for entry in exp["summary"]:
        if entry["send_mode"] in URING and entry.get("unavailable"):
            pytest.skip(f"{entry['send_mode']} unavailable here: {entry['unavailable']}")


def _table_text(exp: dict[str, Any]) -> str:
    from rich.console import Console

    from zcnet.bench.report import build_report, print_tables

    out = io.StringIO()
    print_tables(build_report([exp], {}), Console(file=out, width=220))
    return out.getvalue()


def test_c_uring_senders_move_verified_bytes(tmp_path: Path) -> None:
    """SEND_ZC from the buffer and from the registered buffer, linked in order, and one per
    io_uring_enter: every byte checked by the Python receiver (TCP), every notification counted,
    copies reported."""
    _built()
    out = tmp_path / "s.json"
    assert main(["stream", "--modes", "c-zc," + ",".join(URING),
                 "--sizes", "4K,64K", *TINY,
                 "--json", str(out)]) == 0
    exp = _experiment(out)
    _skip_without_uring(exp)
    assert exp["status"] == "ok"
    runs = [r for r in exp["runs"] if r["send_mode"] in URING]
    assert {(r["send_mode"], r["msg_size"]) for r in runs if r["transport"] == "tcp"} == {
        (m, size) for m in URING for size in (4096, 65536)}
    for run in runs:
        assert run["ok"], run["error"]
        snd = run["sender"]
        assert snd["sends_zerocopy"] >= 1
        assert snd["completions"] == snd["sends_zerocopy"]  # every notification drained
        assert 0 <= snd["completions_copied"] <= snd["completions"]
        assert snd["bytes_zerocopy"] + snd["bytes_copied"] == snd["bytes"]
        if run["transport"] == "tcp":  # the Python receiver checked every byte
            assert run["receiver"]["verified"] == "full"
            assert run["receiver"]["bytes"] == snd["bytes"] == 2 << 20
            assert snd["source_bytes"] == 8 << 20
            # loopback copies zero-copy frags for the receiver: the notifications say so
            # (IORING_SEND_ZC_REPORT_USAGE)
            assert snd["completions_copied"] == snd["completions"]
            assert snd["bytes_copied"] == snd["bytes"]
        else:  # the ifb sink frees the pages without copying
            assert snd["bytes_zerocopy"] > 0
    rows = {(e["transport"], e["msg_size"], e["send_mode"]): e for e in exp["summary"]}
    for t, size in {(r["transport"], r["msg_size"]) for r in runs}:
        uring, fixed = rows[(t, size, "c-uring")], rows[(t, size, "c-uring-fixed")]
        assert uring["c_reference"] == "c-zc" and list(uring["sender_cpu_vs_c"]) == ["c-zc"]
        assert fixed["c_reference"] == "c-zc"
        assert list(fixed["sender_cpu_vs_c"]) == ["c-zc", "c-uring"]
        assert None not in fixed["sender_cpu_vs_c"].values()
        assert fixed["sender_cpu_vs_c_pct"] == fixed["sender_cpu_vs_c"]["c-zc"]
        linked = rows[(t, size, "c-uring-fixed-linked")]
        assert list(linked["sender_cpu_vs_c"]) == ["c-uring-fixed", "c-zc"]
        single = rows[(t, size, "c-uring-fixed-single")]
        assert list(single["sender_cpu_vs_c"]) == ["c-zc", "c-uring-single"]
        assert rows[(t, size, "c-zc")]["c_reference"] is None
    text = _table_text(exp)  # both ratios of c-uring-fixed, side by side in its cell
    assert "% c-zc" in text and "% c-uring" in text


def _pattern_receiver(listener: socket.socket, total: int, result: dict[str, Any],
                      delay: float) -> None:
    """Accept one connection, wait ``delay`` s, then read and check ``total`` pattern bytes."""
    import time

    period = cref.pattern_period()
    conn, _ = listener.accept()
    with conn:
        time.sleep(delay)  # the sender fills the socket buffers meanwhile
        result["first_read"] = time.monotonic()
        buf, got = bytearray(50000), 0
        while got < total + 1:
            k = conn.recv_into(buf)
            if not k:
                break
            view, i = memoryview(buf)[:k], 0
            while i < k:  # compare with the pattern, one period at a time
                off = (got + i) % len(period)
                n = min(k - i, len(period) - off)
                if view[i:i + n] != period[off:off + n]:
                    result["bad_offset"] = got + i
                    return
                i += n
            got += k
        result["bytes"] = got


@pytest.mark.parametrize("mode", URING)
def test_c_uring_sender_under_back_pressure(mode: str) -> None:
    """Socket buffers far smaller than the stream, a receiver that starts late, messages of
    200000 bytes (larger than the send buffer: the kernel continues them, MSG_WAITALL) from the
    cache-hot buffer (unaligned offsets): every byte arrives, in order, after the sender waited."""
    import time

    built = _built()
    warmup, nbytes = 300_000, 8 << 20
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    result: dict[str, Any] = {}
    t = threading.Thread(target=_pattern_receiver,
                         args=(listener, warmup + nbytes, result, 0.3))
    t.start()
    with listener, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.connect(listener.getsockname())
        res = cref.run_sender(built.programs["send"], sock, mode=mode, transport="tcp",
                              msg_size=200_000, warmup=warmup, nbytes=nbytes, source_bytes=0,
                              timeout=120)
        returned = time.monotonic()
        sock.shutdown(socket.SHUT_WR)
        t.join(60)
    if res.get("unavailable"):
        pytest.skip(f"{mode} unavailable here: {res['unavailable']}")
    assert res["ok"], res.get("error")
    assert "bad_offset" not in result, result
    assert result["bytes"] == warmup + nbytes
    assert returned > result["first_read"]  # it could not finish before the receiver read
    assert res["bytes"] == nbytes and res["source_bytes"] == 0
    assert res["completions"] == res["sends_zerocopy"] >= nbytes // 200_000


_MEMLOCK_WRAPPER = """#!{python}
# Run cref_send with RLIMIT_MEMLOCK {limit} bytes, and without CAP_IPC_LOCK (for root: dropped
# from the bounding set before exec), so io_uring charges pinned pages to that limit.
import ctypes, os, resource, sys
ctypes.CDLL(None, use_errno=True).prctl(24, 14, 0, 0, 0)  # PR_CAPBSET_DROP, CAP_IPC_LOCK
resource.setrlimit(resource.RLIMIT_MEMLOCK, ({limit}, {limit}))
os.execv({program!r}, [{program!r}, *sys.argv[1:]])
"""


def test_c_uring_with_little_memlock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RLIMIT_MEMLOCK 1 MiB without CAP_IPC_LOCK: ``c-uring`` meets -ENOMEM as back-pressure
    (sends in flight hold their pages' charge) and still delivers every byte; ``c-uring-fixed``
    cannot register its 8 MiB buffer, so its rows say ``unavailable: ...`` and the experiment
    is ok."""
    built = _built()
    wrapper = tmp_path / "cref_send_memlock"
    wrapper.write_text(_MEMLOCK_WRAPPER.format(python=sys.executable, limit=1 << 20,
                                               program=built.programs["send"]))
    wrapper.chmod(0o755)
    fake = cref.CBuild(programs={**built.programs, "send": str(wrapper)},
                       compiler=built.compiler, cache=built.cache)
    monkeypatch.setattr(cref, "_BUILD", fake)
    out = tmp_path / "s.json"
    assert main(["stream", "--modes", "c-uring,c-uring-fixed", "--sizes", "64K",
                 "--transports", "tcp", *TINY, "--json", str(out)]) == 0
    exp = _experiment(out)
    rows = {e["send_mode"]: e for e in exp["summary"]}
    why = str(rows["c-uring-fixed"].get("unavailable"))
    if "IORING_REGISTER_BUFFERS" not in why:
        pytest.skip(f"io_uring unavailable here: {why}")
    assert exp["status"] == "ok"
    assert rows["c-uring-fixed"]["metrics"] == {}
    assert any("c-uring-fixed unavailable" in n and "RLIMIT_MEMLOCK" in n for n in exp["notes"])
    fixed_runs = [r for r in exp["runs"] if r["send_mode"] == "c-uring-fixed"]
    assert len(fixed_runs) == 1  # skipped after the first
    assert fixed_runs[0]["sender"]["unavailable"] == why
    assert "not available" in fixed_runs[0]["error"]
    run = next(r for r in exp["runs"] if r["send_mode"] == "c-uring")
    assert run["ok"], run["error"]
    assert run["receiver"]["verified"] == "full" and run["receiver"]["bytes"] == 2 << 20
    assert run["sender"]["enobufs"] > 0  # 32 sends of 64 KiB exceed 1 MiB: it waited
    assert run["sender"]["completions"] == run["sender"]["sends_zerocopy"]
    assert "unavailable: IORING_REGISTER_BUFFERS" in _table_text(exp)
