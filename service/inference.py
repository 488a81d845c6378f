"""ONNX Runtime sessions for one bundle: provider selection, warm-up, and the two tower calls.

Provider selection never trusts `get_available_providers()` alone: onnxruntime-gpu lists CUDA on
machines without a GPU and then silently runs on CPU. `auto` asks for CUDA only where it is listed,
then reports the provider the session really got; `cuda` refuses to start without it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.contract import (
    Bundle,
    BundleError,
    Encoded,
    FloatArray,
    IntArray,
    ranker_batch_signature,
    ranker_signature,
    zero_shot_signature,
)

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


class DeviceUnavailable(RuntimeError):
    """MAILREC_DEVICE=cuda on a machine where onnxruntime cannot run CUDA."""


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
                "(install onnxruntime-gpu, and only it)"
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


def create_session(
    path: Path, options: SessionOptions, available: Sequence[str] | None = None
) -> ort.InferenceSession:
    """A session on the best allowed provider; raises DeviceUnavailable if CUDA was demanded."""
    available = list(available if available is not None else ort.get_available_providers())
    providers = requested_providers(options.device, available)
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # CUDA load failures are checked below, not left to the log
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own, untyped, errors
        raise BundleError(path.parent, f"onnxruntime cannot load {path.name}: {exc}") from exc
    got = session.get_providers()
    if options.device == "cuda" and (not got or got[0] != CUDA):
        raise DeviceUnavailable(f"asked for CUDA for {path.name}, onnxruntime gave {got}")
    if CUDA in providers and got and got[0] != CUDA:
        log.warning("CUDA was listed but %s runs on %s", path.name, got[0])
    return session


def _check_session(session: ort.InferenceSession, path: Path, expected: tuple[list[Any], list[Any]]) -> None:
    """The live session's inputs and outputs, against the contract."""
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    want = ([t.name for t in expected[0]], [t.name for t in expected[1]])
    if names != want:
        raise BundleError(path.parent, f"{path.name} session has inputs/outputs {names}, expected {want}")


class Towers:
    """The zero-shot tower (if any) and the ranking tower of one bundle, ready to serve."""

    def __init__(self, bundle: Bundle, options: SessionOptions | None = None) -> None:
        self.bundle = bundle
        self.options = options or SessionOptions()
        schema = bundle.schema
        self.ranker = create_session(bundle.ranker_path, self.options)
        _check_session(self.ranker, bundle.ranker_path, ranker_signature(schema))
        self.zero_shot: ort.InferenceSession | None = None
        zst_path = bundle.zero_shot_path
        if zst_path is not None:
            self.zero_shot = create_session(zst_path, self.options)
            _check_session(self.zero_shot, zst_path, zero_shot_signature(schema))
        self.provider = provider_label(self.ranker.get_providers()[0])
        self.ranker_batch: ort.InferenceSession | None = None
        if self._wants_batching():
            batch_path = bundle.ranker_batch_path
            assert batch_path is not None
            self.ranker_batch = create_session(batch_path, self.options)
            _check_session(self.ranker_batch, batch_path, ranker_batch_signature(schema))
        self.virtual_shape = (1, schema.virtual_slots, schema.d_embed)
        self.virtual_size = schema.virtual_slots * schema.d_embed
        self._no_virtual = np.zeros(self.virtual_shape, np.float32)
        self._gates = {g: np.full((1, 1), g, np.float32) for g in (0.0, 1.0)}
        fill = bundle.fill
        self.fill_mode = str(fill["mode"]) if self.zero_shot is not None else "off"
        self.blend_tau = float(fill.get("tau", 3.0))

    def _wants_batching(self) -> bool:
        mode = self.options.microbatch
        if mode not in MICROBATCH:
            raise ValueError(f"unknown microbatch mode {mode!r}; choose from {MICROBATCH}")
        wanted = mode == "on" or (mode == "auto" and self.provider == "cuda")
        if wanted and self.bundle.ranker_batch_path is None:
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
        """Click probabilities of one user for candidate catalog rows (N,)."""
        feeds = {
            "user_attrs": encoded.user_attrs,
            "context": encoded.context,
            "behavior": encoded.behavior,
            "virtual_behavior": self._no_virtual if virtual is None else virtual,
            "virtual_gate": self._gates.get(gate)
            if gate in self._gates
            else np.full((1, 1), gate, np.float32),
            "candidates": candidates,
        }
        out: FloatArray = self.ranker.run(None, feeds)[0]
        return out

    def score_many(self, calls: list[tuple[Encoded, FloatArray | None, float, IntArray]]) -> list[FloatArray]:
        """`score` for several users in one `ranker_batch.onnx` call; the same scores, call by call."""
        assert self.ranker_batch is not None, "micro-batching is off for this model"
        if len(calls) == 1:  # nothing to merge: the one-user graph, no stacking
            return [self.score(*calls[0])]
        owner = np.repeat(np.arange(len(calls), dtype=np.int64), [len(c[3]) for c in calls])
        feeds = {
            "user_attrs": np.concatenate([c[0].user_attrs for c in calls]),
            "context": np.concatenate([c[0].context for c in calls]),
            "behavior": np.concatenate([c[0].behavior for c in calls]),
            "virtual_behavior": np.concatenate([self._no_virtual if c[1] is None else c[1] for c in calls]),
            "virtual_gate": np.array([[c[2]] for c in calls], np.float32),
            "candidates": np.concatenate([c[3] for c in calls]),
            "owner": owner,
        }
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
            if self.ranker_batch is not None:
                self.score_many([(encoded, virtual, 1.0, np.arange(1, n + 1, dtype=np.int64))] * 2)

    def check_golden(self, atol: float = 1e-5) -> None:
        """Recompute the scores stored at export time; a mismatch means a wrong or broken file."""
        for case in self.bundle.manifest.get("golden", []):
            encoded = Encoded(
                np.asarray(case["user_attrs"], np.int64),
                np.asarray(case["context"], np.int64),
                np.asarray(case["behavior"], np.int64),
                int(case["n_history"]),
            )
            virtual = self.virtual_behavior(encoded.user_attrs)
            call = (encoded, virtual, float(case["gate"]), np.asarray(case["candidates"], np.int64))
            got = [self.score(*call)]
            if self.ranker_batch is not None:
                got += self.score_many([call, call])
            for scores in got:
                diff = float(np.max(np.abs(scores - np.asarray(case["scores"], np.float32))))
                if diff > atol:
                    raise BundleError(self.bundle.path, f"golden scores differ by {diff:.2e} (> {atol})")
