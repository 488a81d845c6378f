"""ONNX Runtime sessions for one bundle: provider and its options, node placement, warm-up, and
the two tower calls.

Provider selection never trusts `get_available_providers()` alone: onnxruntime-gpu lists CUDA on
machines without a GPU and then silently runs on CPU. `auto` asks for CUDA only where it is listed,
then reports the provider the session really got; `cuda` refuses to start without it.

The CUDA provider gets explicit options (`cuda_provider_options`): the device, its memory arena,
and TF32 off. ONNX Runtime enables TF32 matrix products by default on Ampere and later cards, and
they miss the golden scores' 1e-5 (computed in FP32 at export); no parity figure measured on a GPU
justifies a looser tolerance yet, so the service keeps FP32 and the one tolerance, `GOLDEN_ATOL`.

Placement is read, not assumed: each session is created with profiling on, runs once on PAD inputs,
and the profile names the provider of every node that ran (`Placement`); the nodes that are not on
the session's provider are logged at WARNING and shown in /models. Profiling then stops (ONNX
Runtime writes the profile once; later calls cost what they cost without it). ONNX Runtime's own
log stays at WARNING, so its "nodes were not assigned" and "Memcpy nodes are added" lines show too.

Precision: a bundle may hold its ranker in several precisions (fp32, int8; `Bundle.precisions`).
`SessionOptions.ranker_precision` picks one: `auto` serves the bundle's default, a name serves that
one (an error if the bundle lacks it, or if it is a CUDA-only precision and the session is not on
CUDA). The golden scores are fp32's: a reduced precision is held to its own recorded tolerance.

A user with no behavior goes through the bundle's `ranker_no_history.onnx` where it has one and
the ranker served is fp32 (`SessionOptions.no_history_graph`): the same scores as `ranker.onnx`'s
(the golden check compares the two) without the operators that pool an empty sequence.

No I/O binding: every input is a few kilobytes of ids (the item tables live inside the graphs), so
binding them would only move the same copies out of `run`; it pays for large resident inputs or
CUDA graphs, neither of which this service has.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import numpy as np

try:
    import onnxruntime as ort
except ImportError as exc:  # onnxruntime is an extra: `cpu` or `gpu`, never both
    raise ImportError(
        "mailrec needs ONNX Runtime and none is importable: install exactly one of "
        "`pip install 'mailrec[cpu]'` (onnxruntime) or `pip install 'mailrec[gpu]'` (onnxruntime-gpu)"
    ) from exc

from service.candidates import DEFAULTS as RETRIEVE
from service.candidates import RetrieveOptions
from service.coldscores import DEFAULTS as COLD_SCORES
from service.coldscores import ColdScoreOptions
from service.contract import (
    FP32,
    PRECISIONS,
    Bundle,
    BundleError,
    Encoded,
    FloatArray,
    IntArray,
    check_session,
    ranker_batch_signature,
    ranker_feeds,
    ranker_no_history_feeds,
    ranker_no_history_signature,
    ranker_signature,
    zero_shot_signature,
)

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
ARENA_STRATEGIES = ("kSameAsRequested", "kNextPowerOfTwo")
GOLDEN_ATOL = 1e-5  # golden scores at load, on every provider (FP32 everywhere: TF32 is off)
# The wheels that provide the `onnxruntime` module; two of them installed means one overwrote the other.
RUNTIME_WHEELS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")


class DeviceUnavailable(RuntimeError):
    """MAILREC_DEVICE=cuda on a machine where onnxruntime cannot run CUDA."""


def runtime_wheels() -> list[str]:
    """The installed distributions that provide the `onnxruntime` module (one is right)."""
    found = []
    for name in RUNTIME_WHEELS:
        try:
            distribution(name)
        except PackageNotFoundError:
            continue
        found.append(name)
    return found


def requested_providers(device: str, available: Sequence[str]) -> list[str]:
    """Providers to ask for, in order, given the device setting and what onnxruntime lists."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {DEVICES}")
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise DeviceUnavailable(
                f"MAILREC_DEVICE=cuda but onnxruntime lists only {list(available)} "
                "(install onnxruntime-gpu, and only it: pip install 'mailrec[gpu]')"
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


def provider_label(provider: str) -> str:
    return {CUDA: "cuda", CPU: "cpu"}.get(provider, provider.removesuffix("ExecutionProvider").lower())


MICROBATCH = ("auto", "on", "off")


@dataclass(frozen=True)
class SessionOptions:
    device: str = "auto"
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    microbatch: str = "off"  # auto: on when the ranker really runs on CUDA (service.batching)
    microbatch_wait_ms: float = 1.0
    microbatch_max_rows: int = 8192
    cuda_device_id: int = 0
    cuda_mem_limit_mb: int | None = None  # None: ONNX Runtime's default (no cap on the arena)
    cuda_arena_extend: str = "kSameAsRequested"
    cuda_tf32: bool = False  # not a service setting: benchmarks.gpu_check measures what TF32 costs
    ranker_precision: str = "auto"  # auto: the bundle's default precision; else fp32, int8 or fp16
    # a user with no behavior scored by the bundle's ranker_no_history.onnx (same scores, fewer
    # operators), where it has one and the ranker served is fp32
    no_history_graph: bool = True
    # the candidate stage of catalogs too big to score whole (service.candidates), built with the model
    retrieve: RetrieveOptions = RETRIEVE
    # cold users' whole-catalog scores remembered per model (service.coldscores)
    cold_scores: ColdScoreOptions = COLD_SCORES


def cuda_provider_options(options: SessionOptions) -> dict[str, str]:
    """The CUDA execution provider's options, under the names and in the string form ONNX Runtime
    parses (CUDAExecutionProviderInfo::FromProviderOptions); `session.get_provider_options()` reads
    back the values in effect. cudnn_conv_algo_search is left alone: the towers have no Conv."""
    if options.cuda_arena_extend not in ARENA_STRATEGIES:
        raise ValueError(
            f"unknown arena strategy {options.cuda_arena_extend!r}; choose from {ARENA_STRATEGIES}"
        )
    if options.cuda_device_id < 0:
        raise ValueError(f"CUDA device id must be >= 0, not {options.cuda_device_id}")
    out = {
        "device_id": str(options.cuda_device_id),
        "arena_extend_strategy": options.cuda_arena_extend,
        "use_tf32": "1" if options.cuda_tf32 else "0",
        "do_copy_in_default_stream": "1",  # ONNX Runtime's default; 0 can race (onnxruntime#4829)
    }
    if options.cuda_mem_limit_mb is not None:
        out["gpu_mem_limit"] = str(options.cuda_mem_limit_mb * 1024 * 1024)
    return out


def with_provider_options(
    providers: Sequence[str], options: SessionOptions
) -> list[str | tuple[str, dict[str, str]]]:
    """`providers` as InferenceSession takes them: CUDA with its options, the others by name."""
    return [(p, cuda_provider_options(options)) if p == CUDA else p for p in providers]


@dataclass(frozen=True)
class Placement:
    """Where the nodes of one session ran, read from its profile: `elsewhere` lists (node, op type,
    provider) for every node not on `provider`, the session's first provider."""

    provider: str
    nodes: int
    elsewhere: tuple[tuple[str, str, str], ...]
    memcpy: int  # Memcpy nodes ONNX Runtime added between providers (each a copy per call)

    def describe(self) -> dict[str, Any]:
        return {
            "provider": provider_label(self.provider),
            "nodes": self.nodes,
            "not_on_provider": [{"node": n, "op": op, "provider": p} for n, op, p in self.elsewhere],
            "memcpy_nodes": self.memcpy,
        }


def read_placement(profile: list[dict[str, Any]], provider: str) -> Placement:
    """The placement of every node in an ONNX Runtime profile (its "Node" events), against `provider`."""
    ran: dict[str, tuple[str, str]] = {}
    for event in profile:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        args = event.get("args", {})
        ran[name.removesuffix("_kernel_time")] = (str(args.get("op_name", "")), str(args.get("provider", "")))
    elsewhere = tuple(sorted((n, op, p) for n, (op, p) in ran.items() if p != provider))
    memcpy = sum(op.startswith("Memcpy") for op, _ in ran.values())
    return Placement(provider, len(ran), elsewhere, memcpy)


def session_placement(session: ort.InferenceSession) -> Placement:
    """End the profiling of a session created by `create_session(..., profile_dir)` that has run
    once; the profile file is read and deleted."""
    path = Path(session.end_profiling())
    try:
        profile = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    return read_placement(profile, session.get_providers()[0])


def create_session(
    path: Path,
    options: SessionOptions,
    available: Sequence[str] | None = None,
    profile_dir: Path | None = None,
) -> ort.InferenceSession:
    """A session on the best allowed provider; raises DeviceUnavailable if CUDA was demanded.
    With `profile_dir`, profiling is on until `session_placement` reads it."""
    available = list(available if available is not None else ort.get_available_providers())
    providers = requested_providers(options.device, available)
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 2  # warnings: ONNX Runtime's own word on placement and Memcpy nodes
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_dir / path.stem)
    try:
        session = ort.InferenceSession(
            str(path), sess_options=so, providers=with_provider_options(providers, options)
        )
    except Exception as exc:  # onnxruntime raises its own, untyped, errors
        raise BundleError(path.parent, f"onnxruntime cannot load {path.name}: {exc}") from exc
    got = session.get_providers()
    if options.device == "cuda" and (not got or got[0] != CUDA):
        raise DeviceUnavailable(f"asked for CUDA for {path.name}, onnxruntime gave {got}")
    if CUDA in providers and got and got[0] != CUDA:
        log.warning("CUDA was listed but %s runs on %s", path.name, got[0])
    return session


class Towers:
    """The zero-shot tower (if any) and the ranking tower of one bundle, ready to serve."""

    def __init__(self, bundle: Bundle, options: SessionOptions | None = None) -> None:
        self.bundle = bundle
        self.options = options or SessionOptions()
        schema = bundle.schema
        with tempfile.TemporaryDirectory(prefix="mailrec-placement-") as tmp:
            profiles = Path(tmp)
            self.precision = self._choose_precision()
            chosen = bundle.precisions[self.precision]
            ranker_path = bundle.path / chosen.ranker
            self.ranker = create_session(ranker_path, self.options, profile_dir=profiles)
            check_session(self.ranker, ranker_path, ranker_signature(schema))
            self.zero_shot: ort.InferenceSession | None = None
            zst_path = bundle.zero_shot_path
            if zst_path is not None:
                self.zero_shot = create_session(zst_path, self.options, profile_dir=profiles)
                check_session(self.zero_shot, zst_path, zero_shot_signature(schema))
            self.provider = provider_label(self.ranker.get_providers()[0])
            if chosen.device == "cuda" and self.provider != "cuda":
                raise BundleError(
                    bundle.path, f"{self.precision} ranker is for CUDA; it would run on {self.provider}"
                )
            self.ranker_batch: ort.InferenceSession | None = None
            if self._wants_batching():
                assert chosen.ranker_batch is not None
                batch_path = bundle.path / chosen.ranker_batch
                self.ranker_batch = create_session(batch_path, self.options, profile_dir=profiles)
                check_session(self.ranker_batch, batch_path, ranker_batch_signature(schema))
            self.ranker_no_history: ort.InferenceSession | None = None
            no_history_path = bundle.ranker_no_history_path
            if no_history_path is not None and self.options.no_history_graph and self.precision == FP32:
                self.ranker_no_history = create_session(no_history_path, self.options, profile_dir=profiles)
                check_session(self.ranker_no_history, no_history_path, ranker_no_history_signature(schema))
            self.virtual_shape = (1, schema.virtual_slots, schema.d_embed)
            self.virtual_size = schema.virtual_slots * schema.d_embed
            self._no_virtual = np.zeros(self.virtual_shape, np.float32)
            self._gates = {g: np.full((1, 1), g, np.float32) for g in (0.0, 1.0)}
            fill = bundle.manifest.fill
            self.fill_mode = fill.mode if self.zero_shot is not None else "off"
            self.blend_tau = float(fill.tau)
            self.warm_up()  # every session runs once, profiled
            self.placement = {name: session_placement(s) for name, s in self.sessions().items()}
        for name, placed in self.placement.items():
            if placed.elsewhere:
                log.warning(
                    "%s: %d of %d nodes of %s not on %s: %s",
                    bundle.path,
                    len(placed.elsewhere),
                    placed.nodes,
                    name,
                    placed.provider,
                    ", ".join(f"{n} ({op}, {p})" for n, op, p in placed.elsewhere),
                )
        self.wheels = runtime_wheels()
        if len(self.wheels) > 1:
            log.warning(
                "%s all provide the onnxruntime module, which is one of them: install one", self.wheels
            )
        # CPU calls (tens of microseconds) run inline: a thread hop costs about as much as the call.
        # A device call waits for the GPU (launch, copies, synchronisation): off the event loop.
        self.inline = all(s.get_providers()[0] == CPU for s in self.sessions().values())

    def _choose_precision(self) -> str:
        wanted = self.options.ranker_precision
        if wanted == "auto":
            return self.bundle.default_precision
        if wanted not in PRECISIONS:
            raise ValueError(
                f"unknown ranker precision {wanted!r}; choose from auto, {', '.join(PRECISIONS)}"
            )
        have = self.bundle.precisions
        if wanted not in have:
            raise BundleError(
                self.bundle.path, f"no {wanted} ranker in this bundle (it has {', '.join(have)})"
            )
        return wanted

    @property
    def golden_atol(self) -> float:
        """The golden check's tolerance for the served precision (the golden scores are fp32's)."""
        if self.precision == FP32:
            return GOLDEN_ATOL
        return max(GOLDEN_ATOL, self.bundle.precisions[self.precision].golden_atol)

    def sessions(self) -> dict[str, ort.InferenceSession]:
        """The open sessions by graph name (zero_shot, ranker, ranker_batch, ranker_no_history)."""
        named = {
            "zero_shot": self.zero_shot,
            "ranker": self.ranker,
            "ranker_batch": self.ranker_batch,
            "ranker_no_history": self.ranker_no_history,
        }
        return {name: s for name, s in named.items() if s is not None}

    def provider_options(self) -> dict[str, dict[str, str]]:
        """Each session's provider options in effect, as ONNX Runtime reports them."""
        return {
            name: dict(s.get_provider_options().get(s.get_providers()[0], {}))
            for name, s in self.sessions().items()
        }

    def describe_device(self) -> dict[str, Any]:
        """What /models shows of the device: providers, their options, placement, the golden tolerance."""
        return {
            "provider": self.provider,
            "ranker_precision": self.precision,
            "onnxruntime": f"{ort.__version__} ({', '.join(self.wheels)})",
            "inline": self.inline,
            "golden_atol": self.golden_atol,
            "provider_options": self.provider_options(),
            "placement": {name: p.describe() for name, p in self.placement.items()},
        }

    def _wants_batching(self) -> bool:
        mode = self.options.microbatch
        if mode not in MICROBATCH:
            raise ValueError(f"unknown microbatch mode {mode!r}; choose from {MICROBATCH}")
        wanted = mode == "on" or (mode == "auto" and self.provider == "cuda")
        if wanted and self.bundle.precisions[self.precision].ranker_batch is None:
            log.warning(
                "%s has no ranker_batch.onnx (exported before it existed): no micro-batching",
                self.bundle.path,
            )
            return False
        return wanted

    def virtual_behavior(self, user_attrs: IntArray) -> FloatArray:
        """(B, A) attribute ids -> (B, K, d) virtual behavior."""
        if self.zero_shot is None:
            return np.zeros((user_attrs.shape[0], *self.virtual_shape[1:]), np.float32)
        out: FloatArray = self.zero_shot.run(None, {"user_attrs": user_attrs})[0]
        return out

    def score(
        self, encoded: Encoded, virtual: FloatArray | None, gate: float, candidates: IntArray
    ) -> FloatArray:
        """Click probabilities of one user for candidate catalog rows (N,); a user with no behavior
        through `ranker_no_history.onnx` where it is open (the same scores)."""
        gates = self._gates.get(gate)
        if gates is None:
            gates = np.full((1, 1), gate, np.float32)
        virtual = self._no_virtual if virtual is None else virtual
        out: FloatArray
        if self.ranker_no_history is not None and encoded.n_history == 0:
            feeds = ranker_no_history_feeds(encoded, virtual, gates, candidates)
            out = self.ranker_no_history.run(None, feeds)[0]
        else:
            out = self.ranker.run(None, ranker_feeds((encoded,), virtual, gates, candidates))[0]
        return out

    def score_many(self, calls: list[tuple[Encoded, FloatArray | None, float, IntArray]]) -> list[FloatArray]:
        """`score` for several users in one `ranker_batch.onnx` call; the same scores, call by call."""
        assert self.ranker_batch is not None, "micro-batching is off for this model"
        if len(calls) == 1:  # nothing to merge: the one-user graph, no stacking
            return [self.score(*calls[0])]
        owner = np.repeat(np.arange(len(calls), dtype=np.int64), [len(c[3]) for c in calls])
        feeds = ranker_feeds(
            [c[0] for c in calls],
            np.concatenate([self._no_virtual if c[1] is None else c[1] for c in calls]),
            np.array([[c[2]] for c in calls], np.float32),
            np.concatenate([c[3] for c in calls]),
            owner,
        )
        out: FloatArray = self.ranker_batch.run(None, feeds)[0]
        return np.split(out, np.cumsum([len(c[3]) for c in calls])[:-1])

    def warm_up(self) -> None:
        """Run both towers once on PAD inputs (first calls pay for allocation)."""
        schema = self.bundle.schema
        user = np.zeros((1, schema.user_slots), np.int64)
        encoded = Encoded(
            user,
            np.zeros((1, schema.context_slots), np.int64),
            np.zeros((1, schema.behavior_len), np.int64),
            0,
        )
        virtual = self.virtual_behavior(user)
        for n in (1, min(len(self.bundle.catalog), 256)):
            self.score(encoded, virtual, 1.0, np.arange(1, n + 1, dtype=np.int64))
            if self.ranker_no_history is not None:  # that call took it; ranker.onnx too
                self.score(encoded.with_history(np.ones(1, np.int64)), virtual, 1.0, np.arange(1, n + 1))
            if self.ranker_batch is not None:
                self.score_many([(encoded, virtual, 1.0, np.arange(1, n + 1, dtype=np.int64))] * 2)

    def check_golden(self, atol: float | None = None) -> None:
        """Recompute the scores stored at export time; a mismatch means a wrong or broken file.
        `atol`: the served precision's (`golden_atol`) unless given."""
        atol = self.golden_atol if atol is None else atol
        for case in self.bundle.manifest.golden:
            virtual = self.virtual_behavior(case.encoded.user_attrs)
            call = (case.encoded, virtual, case.gate, case.candidates)
            got = [self.score(*call)]
            if self.ranker_batch is not None:
                got += self.score_many([call, call])
            for scores in got:
                diff = float(np.max(np.abs(scores - case.scores)))
                if diff > atol:
                    raise BundleError(self.bundle.path, f"golden scores differ by {diff:.2e} (> {atol})")
            if self.ranker_no_history is not None:  # the same user without behavior, both graphs
                cold = replace(case.encoded, behavior=np.zeros_like(case.encoded.behavior), n_history=0)
                gates = np.full((1, 1), case.gate, np.float32)
                full = self.ranker.run(None, ranker_feeds((cold,), virtual, gates, case.candidates))[0]
                diff = float(np.max(np.abs(self.score(cold, *call[1:]) - full)))
                if diff > GOLDEN_ATOL:
                    problem = f"ranker_no_history differs from ranker by {diff:.2e} (> {GOLDEN_ATOL})"
                    raise BundleError(self.bundle.path, problem)
