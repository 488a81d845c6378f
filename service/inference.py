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


@dataclass(frozen=True)
class SessionOptions:
    device: str = "auto"
    intra_op_threads: int = 1
    inter_op_threads: int = 1


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
        self.virtual_shape = (1, schema.virtual_slots, schema.d_embed)
        self._no_virtual = np.zeros(self.virtual_shape, np.float32)
        fill = bundle.fill
        self.fill_mode = str(fill["mode"]) if self.zero_shot is not None else "off"
        self.blend_tau = float(fill.get("tau", 3.0))

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
            "virtual_gate": np.full((1, 1), gate, np.float32),
            "candidates": candidates,
        }
        out: FloatArray = self.ranker.run(None, feeds)[0]
        return out

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
            got = self.score(encoded, virtual, float(case["gate"]), np.asarray(case["candidates"], np.int64))
            diff = float(np.max(np.abs(got - np.asarray(case["scores"], np.float32))))
            if diff > atol:
                raise BundleError(self.bundle.path, f"golden scores differ by {diff:.2e} (> {atol})")
