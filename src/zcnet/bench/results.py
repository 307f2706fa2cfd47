"""The typed shapes of the benchmark's results: what docs/bench.md documents, as TypedDicts.

Theory of operation: the experiments build plain dicts (they go to JSON as they are), typed by
these ``TypedDict`` classes, so that the schema lives next to the code and mypy checks the
builders. A shape lists the keys every object of that kind has; ``NotRequired`` keys belong to
some experiments only (``c_reference`` for ``stream`` and ``rx``, ...). The raw figures a peer
reports (a run's ``sender``, ``receiver``, ``client``, ``server``) stay open dicts
(:data:`Side`): they differ per mode and the docs list them per experiment.

A mode that cannot run on this machine says so in one field, ``unavailable`` (the reason), on
the peer's result (:func:`unavailable_side`), on the run and on the summary row; nothing matches
error text. :func:`shape_errors` checks a decoded JSON object against a shape (the tests use it
on the JSON of tiny runs). Pure logic, stdlib only.

No ``from __future__ import annotations`` here: ``TypedDict`` reads ``NotRequired`` from the
evaluated annotations when it builds ``__required_keys__``.
"""

import types
import typing
from typing import Any, Literal, NotRequired, TypedDict, Union, get_args, get_origin

__all__ = ["SHAPES", "DaskRun", "DaskSummary", "RpcChurnRun", "RpcChurnSummary", "RxmemRun",
           "RxmemSummary", "Environment", "Experiment", "Machine",
           "MemoryRun", "MemorySummary", "Profile", "ProfileSide", "Report", "Role", "RpcRun",
           "RpcSummary", "Run", "RxRun", "RxSummary", "Side", "Stat", "Status", "StreamRun",
           "StreamSummary", "SummaryEntry", "Verified", "shape_errors", "unavailable_side"]

#: ``"timed"`` repetitions count in the summary; ``"verify"`` ones check every byte, untimed;
#: ``"profile"`` ones run under perf (they go to ``profiles``, never to ``runs``).
Role = Literal["timed", "verify", "profile"]
#: How much of a run's bytes were checked.
Verified = Literal["full", "spot", "none"]
#: An experiment's outcome.
Status = Literal["ok", "partial", "skipped"]
#: The raw figures one peer reports for one run (open: they differ per mode).
Side = dict[str, Any]


class Stat(TypedDict):
    """Median, minimum and maximum of ``n`` timed runs (:class:`zcnet.bench.stats.Summary`)."""

    median: float
    min: float
    max: float
    n: int


class Run(TypedDict):
    """One repetition of one configuration (the keys every experiment's runs have)."""

    role: Role
    rep: int | None
    verified: Verified | None
    ok: bool
    error: str | None
    metrics: dict[str, float | None]


class StreamRun(Run):
    """A run of ``stream``: one transport, message size and send mode."""

    transport: str
    msg_size: int
    send_mode: str
    recv_mode: str | None
    sender: Side | None
    receiver: Side | None
    unavailable: str | None


class RxRun(Run):
    """A run of ``rx``: one receive mode against the experiment's sender."""

    recv_mode: str
    send_mode: str
    loop: str | None
    msg_size: int
    sender: Side | None
    receiver: Side | None
    unavailable: str | None


class RpcRun(Run):
    """A run of ``rpc``: the server's receive path off, mapping or default policy."""

    zerocopy_receive: bool
    rx_policy: str | None
    client: Side
    server: Side
    unavailable: str | None


class MemoryRun(Run):
    """A run of ``memory``: copy or zero-copy sends against a stalled receiver (the samples
    and what explains them only when it succeeded)."""

    send_mode: str
    reasons: NotRequired[dict[str, Any]]
    sender_stats: NotRequired[dict[str, Any] | None]
    baseline: NotRequired[dict[str, Any]]
    samples: NotRequired[list[dict[str, Any]]]


class DaskRun(Run):
    """A run of ``dask``: one transfer between two workers (``variant`` null when the
    experiment's process failed)."""

    variant: str | None
    protocol: str | None
    bytes: NotRequired[int | None]
    sender: NotRequired[Side | None]
    receiver: NotRequired[Side | None]


class SummaryEntry(TypedDict):
    """The summary of one configuration: its keys (in the subclasses) and the metrics."""

    metrics: dict[str, Stat]
    unavailable: NotRequired[str]


class StreamSummary(SummaryEntry):
    """A ``stream`` summary row: its configuration and the ratios to the C senders."""

    transport: str
    msg_size: int
    send_mode: str
    c_reference: NotRequired[str | None]
    sender_cpu_vs_c_pct: NotRequired[float | None]
    sender_cpu_vs_c: NotRequired[dict[str, float | None]]


class RxSummary(SummaryEntry):
    """An ``rx`` summary row: the receive mode, its ratios and (zcnet) how it ended."""

    recv_mode: str
    receiver_cpu_vs_recv_into_pct: NotRequired[float | None]
    c_reference: NotRequired[str | None]
    receiver_cpu_vs_c_pct: NotRequired[float | None]
    rx_mode: NotRequired[str]
    fallback_reason: NotRequired[str | None]
    switched_after_calls: NotRequired[int | None]


class RpcSummary(SummaryEntry):
    """An ``rpc`` summary row."""

    zerocopy_receive: bool
    rx_policy: str | None


class MemorySummary(SummaryEntry):
    """A ``memory`` summary row."""

    send_mode: str


class DaskSummary(SummaryEntry):
    """A ``dask`` summary row, with each worker's CPU relative to ``tcp``."""

    variant: str | None
    sender_cpu_vs_tcp_pct: NotRequired[float | None]
    receiver_cpu_vs_tcp_pct: NotRequired[float | None]


class RpcChurnRun(RpcRun):
    """A run of ``rpc --mmap-churn`` (experiment ``rpc-churn``): a receive variant, with no
    churn thread, the mmap churn or its control (``churn``: none, mmap, syscall)."""

    rx_variant: str
    churn: str


class RpcChurnSummary(SummaryEntry):
    """An ``rpc-churn`` summary row, churn rows relative to the same variant without churn."""

    rx_variant: str
    churn: str
    requests_per_s_vs_no_churn_pct: NotRequired[float | None]
    server_cpu_vs_no_churn_pct: NotRequired[float | None]
    latency_p99_vs_no_churn_pct: NotRequired[float | None]
    requests_per_s_vs_control_pct: NotRequired[float | None]
    server_cpu_vs_control_pct: NotRequired[float | None]
    latency_p99_vs_control_pct: NotRequired[float | None]
    lock_path_pct: NotRequired[float | None]


class RxmemRun(Run):
    """A run of ``rxmem``: one size held in one mode, in a memory cgroup of its own."""

    mode: str
    size_mib: int
    limit_bytes: int | None
    cgroup: dict[str, Any] | None
    receiver: Side
    sender: Side


class RxmemSummary(SummaryEntry):
    """An ``rxmem`` summary row."""

    size_mib: int
    mode: str


#: Each experiment's run and summary row shapes, by name (what a test of the JSON checks).
SHAPES: dict[str, tuple[type, type]] = {
    "stream": (StreamRun, StreamSummary),
    "rx": (RxRun, RxSummary),
    "rpc": (RpcRun, RpcSummary),
    "rpc-churn": (RpcChurnRun, RpcChurnSummary),
    "memory": (MemoryRun, MemorySummary),
    "rxmem": (RxmemRun, RxmemSummary),
    "dask": (DaskRun, DaskSummary),
}


class ProfileSide(TypedDict):
    """One side's perf profile: sample count and top symbols (or why not)."""

    samples: int | None
    top: list[dict[str, Any]]
    error: str | None


class Profile(TypedDict):
    """One mode's ``--profile`` repetition; its configuration keys are added beside these."""

    ok: bool
    error: str | None
    sender: ProfileSide | None
    receiver: ProfileSide | None


class Environment(TypedDict):
    """Where an experiment ran (:meth:`zcnet.bench.env.Environment.describe`)."""

    netns: bool
    host: str
    lo_mtu: int | None
    ifb_sink: str | None
    notes: list[str]


class Experiment(TypedDict):
    """One experiment of the report (docs/bench.md, "Each experiment object")."""

    name: str
    status: Status
    reason: str | None
    environment: Environment | None
    parameters: dict[str, Any]
    runs: list[Any]
    summary: list[Any]
    notes: list[str]
    c_reference: NotRequired[dict[str, Any] | None]
    profiles: NotRequired[list[dict[str, Any]]]
    profile_unavailable: NotRequired[str | None]
    zc_worker_stats: NotRequired[dict[str, Any]]


class Machine(TypedDict):
    """The machine a report was made on (:func:`zcnet.bench.machine.machine_info`)."""

    kernel: str
    system: str
    cpu: str
    nproc: int
    python: str
    zcnet_implementation: str
    zcnet_implementation_reason: str
    root: bool


class Report(TypedDict):
    """The whole JSON document, schema version 1."""

    schema_version: int
    generator: str
    zcnet_version: str
    created_utc: str
    command: list[str] | None
    machine: Machine
    parameters: dict[str, Any]
    experiments: list[Experiment]


def unavailable_side(reason: str, error: str | None = None) -> Side:
    """A peer's result for a mode that cannot run here: ``ok`` false, ``unavailable`` the
    reason (what the orchestrator reads) and ``error`` (what a person reads)."""
    return {"ok": False, "unavailable": reason, "error": error or f"not available: {reason}"}


# -- checking decoded JSON against a shape ---------------------------------------------------

def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")


def _value_errors(value: Any, tp: Any, where: str) -> list[str]:
    """Why ``value`` (decoded JSON) is not of type ``tp`` (``[]`` when it is)."""
    origin = get_origin(tp)
    if tp is Any:
        return []
    if origin is NotRequired:
        return _value_errors(value, get_args(tp)[0], where)
    if origin in (Union, types.UnionType):
        options = [_value_errors(value, arg, where) for arg in get_args(tp)]
        return [] if any(not o for o in options) else min(options, key=len)
    if origin is Literal:
        return [] if value in get_args(tp) else [f"{where}: {value!r} not in {get_args(tp)}"]
    if tp is type(None):
        return [] if value is None else [f"{where}: expected null, got {value!r}"]
    if _is_typeddict(tp):
        return shape_errors(value, tp, where)
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        (item,) = get_args(tp) or (Any,)
        return [e for i, v in enumerate(value) for e in _value_errors(v, item, f"{where}[{i}]")]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        args = get_args(tp)
        if not args:
            return []
        return [e for k, v in value.items() for e in _value_errors(v, args[1], f"{where}.{k}")]
    if tp is float:  # JSON writes 1.0 as 1.0 but a whole median may come back as an int
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected a number, got {value!r}"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected an integer, got {value!r}"]
    if isinstance(tp, type):
        return [] if isinstance(value, tp) else [
            f"{where}: expected {tp.__name__}, got {type(value).__name__}"]
    return []


def shape_errors(value: Any, shape: type, where: str = "$") -> list[str]:
    """Why the decoded JSON ``value`` does not have the TypedDict ``shape``: missing keys,
    keys the shape does not list, values of the wrong type (``[]`` when it has it)."""
    if not isinstance(value, dict):
        return [f"{where}: expected an object, got {type(value).__name__}"]
    hints = typing.get_type_hints(shape)
    required: frozenset[str] = getattr(shape, "__required_keys__", frozenset())
    errors = [f"{where}: missing {k!r}" for k in sorted(required - value.keys())]
    errors += [f"{where}: unexpected key {k!r}" for k in sorted(value.keys() - hints.keys())]
    for key in value.keys() & hints.keys():
        errors += _value_errors(value[key], hints[key], f"{where}.{key}")
    return errors
