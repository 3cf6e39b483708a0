"""Mixed precision: bf16 autocast only where the hardware computes bf16 natively, fp32 weights."""

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from app.ml.precision import native_bf16, use_bf16
from app.ml.training import fine_tune
from tests.unit.test_training import RecordingObserver, make_plan

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    for line in CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(torch.cuda.is_available() or not CPUINFO.exists(),
                    reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_native_bf16_follows_the_cpu_flags() -> None:
    flags = cpu_flags()
    assert native_bf16() == bool({"avx512_bf16", "amx_bf16", "amx_tile"} & flags), flags


def test_the_operator_can_turn_it_off() -> None:
    assert use_bf16(False) is False
    assert use_bf16(True) == native_bf16()


@pytest.fixture
def linear_output_dtypes() -> Iterator[set[torch.dtype]]:
    """Dtypes of every nn.Linear output computed while the fixture is active, in any model."""
    seen: set[torch.dtype] = set()

    def record(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("mixed_precision", [True, False])
def test_training_computes_in_bf16_only_where_native_and_saves_fp32(
        tiny_model_dir: Path, tmp_path: Path, linear_output_dtypes: set[torch.dtype],
        mixed_precision: bool) -> None:
    plan = dataclasses.replace(make_plan(tiny_model_dir, tmp_path / "job", n_epochs=1),
                               mixed_precision=mixed_precision)
    result = fine_tune(plan, RecordingObserver())

    expected = {torch.bfloat16} if use_bf16(mixed_precision) else {torch.float32}
    # Autocast covers training and evaluation alike; the thread probe runs in the same format.
    assert linear_output_dtypes == expected
    assert result.best_checkpoint is not None
    with safe_open(str(result.best_checkpoint / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_tensor(name).dtype for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {torch.float32}
