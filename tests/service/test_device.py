"""The device path: CUDA provider options, node placement, device calls off the event loop, no
thread per reload. ONNX Runtime's real objects throughout; only the GPU itself is mocked
(`_FakeGpuOrt`: sessions that claim CUDA while their nodes really run on the CPU)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_inference_collection import check_and_normalize_provider_args

import service.inference as inference
from service.bundles import ModelRegistry
from service.contract import Encoded, load_bundle
from service.inference import (
    CPU,
    CUDA,
    GOLDEN_ATOL,
    SessionOptions,
    Towers,
    create_session,
    cuda_provider_options,
    read_placement,
    runtime_wheels,
    with_provider_options,
)
from service.metrics import Metrics
from tests.conftest import REPO
from tests.service.test_units import _FakeGpuOrt


def test_cuda_options_reach_onnxruntime_in_the_form_it_parses() -> None:
    """ONNX Runtime's own argument normalisation (what InferenceSession runs before the C++ CUDA
    provider parses the strings): CUDA gets every option, TF32 off, the CPU provider none."""
    options = SessionOptions(cuda_device_id=1, cuda_mem_limit_mb=512, cuda_arena_extend="kNextPowerOfTwo")
    names, provider_options = check_and_normalize_provider_args(
        with_provider_options([CUDA, CPU], options), None, [CUDA, CPU]
    )
    assert names == [CUDA, CPU]
    assert provider_options == [
        {
            "device_id": "1",
            "arena_extend_strategy": "kNextPowerOfTwo",
            "use_tf32": "0",
            "do_copy_in_default_stream": "1",
            "gpu_mem_limit": str(512 * 1024 * 1024),
        },
        {},
    ]
    assert with_provider_options([CPU], options) == [CPU]


def test_cuda_options_defaults_and_refusals() -> None:
    default = cuda_provider_options(SessionOptions())
    assert default["use_tf32"] == "0" and default["device_id"] == "0"
    assert default["arena_extend_strategy"] == "kSameAsRequested" and "gpu_mem_limit" not in default
    assert cuda_provider_options(SessionOptions(cuda_tf32=True))["use_tf32"] == "1"
    with pytest.raises(ValueError, match="arena strategy"):
        cuda_provider_options(SessionOptions(cuda_arena_extend="kDoubling"))
    with pytest.raises(ValueError, match="device id"):
        cuda_provider_options(SessionOptions(cuda_device_id=-1))


def _profile(path: Path, tmp_path: Path, feeds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A real CPU session's profile after one run."""
    session = create_session(path, SessionOptions(device="cpu"), profile_dir=tmp_path)
    session.run(None, feeds)
    profile: list[dict[str, Any]] = json.loads(Path(session.end_profiling()).read_text())
    return profile


def test_placement_is_read_from_a_real_profile(tiny_bundle: Callable[..., Path], tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle("mail", "base"))
    assert bundle.zero_shot_path is not None
    profile = _profile(bundle.zero_shot_path, tmp_path, {"user_attrs": np.zeros((1, 4), np.int64)})
    ops = {
        e["name"].removesuffix("_kernel_time"): e["args"]["op_name"] for e in profile if e["cat"] == "Node"
    }
    on_cpu = read_placement(profile, CPU)
    assert on_cpu.nodes == len(ops) > 0 and on_cpu.elsewhere == () and on_cpu.memcpy == 0
    # The same nodes judged against CUDA: every one of them is named, with its op and provider.
    on_cuda = read_placement(profile, CUDA)
    assert on_cuda.nodes == len(ops)
    assert on_cuda.elsewhere == tuple(sorted((n, op, CPU) for n, op in ops.items()))
    shown = on_cuda.describe()
    assert shown["provider"] == "cuda" and len(shown["not_on_provider"]) == len(ops)
    assert shown["not_on_provider"][0] == {
        "node": on_cuda.elsewhere[0][0],
        "op": on_cuda.elsewhere[0][1],
        "provider": CPU,
    }


def test_memcpy_nodes_are_counted() -> None:
    """The events ONNX Runtime writes for the copies it adds between providers (op MemcpyToHost /
    MemcpyFromHost, run by the CUDA provider) count as copies, not as misplaced nodes."""
    events = [
        {"cat": "Node", "name": "a_kernel_time", "args": {"op_name": "Gemm", "provider": CUDA}},
        {
            "cat": "Node",
            "name": "Memcpy_token_1_kernel_time",
            "args": {"op_name": "MemcpyToHost", "provider": CUDA},
        },
        {"cat": "Node", "name": "b_kernel_time", "args": {"op_name": "Shape", "provider": CPU}},
        {"cat": "Session", "name": "model_run", "args": {}},
    ]
    placed = read_placement(events, CUDA)
    assert placed.nodes == 3 and placed.memcpy == 1 and placed.elsewhere == (("b", "Shape", CPU),)


def test_towers_check_placement_of_every_graph_then_stop_profiling(tiny_bundle: Callable[..., Path]) -> None:
    bundle = load_bundle(tiny_bundle("mail", "base"))
    towers = Towers(bundle, SessionOptions(device="cpu", microbatch="on"))
    assert set(towers.placement) == {"zero_shot", "ranker", "ranker_batch", "ranker_no_history"}
    for placed in towers.placement.values():
        assert placed.provider == CPU and placed.nodes > 0 and placed.elsewhere == ()
    assert all(s.end_profiling() == "" for s in towers.sessions().values())  # profiling is over
    device = towers.describe_device()
    assert device["provider"] == "cpu" and device["inline"] is True and device["golden_atol"] == GOLDEN_ATOL
    assert device["onnxruntime"] == f"{ort.__version__} (onnxruntime)"
    assert device["provider_options"] == {
        g: {} for g in ("zero_shot", "ranker", "ranker_batch", "ranker_no_history")
    }
    towers.check_golden()


def test_nodes_off_the_claimed_provider_are_logged_and_shown(
    tiny_bundle: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A session that says CUDA while its nodes ran on the CPU (the fake GPU: real CPU sessions
    underneath, so the profile is real) is caught node by node, not passed as CUDA."""
    bundle = load_bundle(tiny_bundle("mail", "base"))
    fake = _FakeGpuOrt(ort, has_gpu=True)
    fake.listed = [CUDA, CPU]
    monkeypatch.setattr(inference, "ort", fake)
    with caplog.at_level(logging.WARNING, logger="service.inference"):
        towers = Towers(bundle, SessionOptions(device="cuda", cuda_device_id=0))
    assert towers.provider == "cuda" and towers.inline is False
    # every session was asked for CUDA with the explicit options, TF32 off
    for providers in fake.asked:
        assert providers[0] == (CUDA, cuda_provider_options(SessionOptions())) and providers[1] == CPU
    for name in ("zero_shot", "ranker"):
        placed = towers.placement[name]
        assert placed.provider == CUDA and len(placed.elsewhere) == placed.nodes > 0
        assert all(p == CPU for _, _, p in placed.elsewhere)
        warning = next(r.getMessage() for r in caplog.records if f"nodes of {name} not on" in r.getMessage())
        assert f"{placed.nodes} of {placed.nodes} nodes" in warning and placed.elsewhere[0][0] in warning
    shown = towers.describe_device()["placement"]["ranker"]
    assert [n["node"] for n in shown["not_on_provider"]] == [
        n for n, _, _ in towers.placement["ranker"].elsewhere
    ]


def test_one_runtime_wheel_and_a_clear_error_without_any() -> None:
    assert runtime_wheels() == ["onnxruntime"]  # the Makefile's venv: the cpu extra, alone
    code = "import sys; sys.modules['onnxruntime'] = None; import service.inference"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0
    assert "mailrec needs ONNX Runtime" in done.stderr and "mailrec[gpu]" in done.stderr


def _device_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("mailrec-"))


def test_reloads_start_no_thread_and_free_the_old_sessions(tiny_bundle: Callable[..., Path]) -> None:
    path = tiny_bundle("mail", "base")

    async def scenario() -> tuple[list[list[str]], list[weakref.ref[Towers]]]:
        registry = ModelRegistry(SessionOptions(device="cpu", microbatch="on"), Metrics())
        threads, olds = [], []
        try:
            registry.put(await asyncio.get_running_loop().run_in_executor(None, registry.load, "mail", path))
            for _ in range(6):
                model = registry.get("mail")
                assert model.batcher is not None
                schema = model.bundle.schema
                enc = Encoded(
                    np.zeros((1, schema.user_slots), np.int64),
                    np.zeros((1, schema.context_slots), np.int64),
                    np.zeros((1, schema.behavior_len), np.int64),
                    0,
                )
                rows = np.arange(1, 11, dtype=np.int64)
                scores = await asyncio.gather(*(model.batcher.score(enc, None, 0.0, rows) for _ in range(3)))
                assert all(np.array_equal(s, model.towers.score(enc, None, 0.0, rows)) for s in scores)
                threads.append(_device_threads())
                new, old = await registry.reload("mail", path)
                assert old is model and new is registry.get("mail")
                olds.append(weakref.ref(old.towers))
                del model, old, new
        finally:
            registry.close()
        return threads, olds

    before = _device_threads()
    threads, olds = asyncio.run(scenario())
    assert threads == [[*before, "mailrec-device_0"]] * len(threads)  # one device thread, never more
    assert _device_threads() == before  # and it ends with the registry
    assert all(ref() is None for ref in olds)  # replaced sessions are released, not kept by a thread


def test_device_calls_leave_the_event_loop_only_off_the_cpu(tiny_bundle: Callable[..., Path]) -> None:
    path = tiny_bundle("control", "base")

    async def where(inline: bool) -> str:
        registry = ModelRegistry(SessionOptions(device="cpu"), Metrics())
        try:
            model = registry.load("control", path)
            assert model.towers.inline  # CPU sessions: inline
            model.towers.inline = inline  # what a CUDA session sets
            return await model.on_device(lambda: threading.current_thread().name)
        finally:
            registry.close()

    assert asyncio.run(where(True)) == threading.current_thread().name
    assert asyncio.run(where(False)) == "mailrec-device_0"
