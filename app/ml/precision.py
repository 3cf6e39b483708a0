"""Which number format training computes in.

bf16 autocast keeps the weights, gradients and optimizer state in fp32 and runs matmuls in
bf16. Where the hardware has bf16 units (recent GPUs; CPUs with AVX512-BF16 or AMX) that
roughly halves a MiniLM step at equal accuracy; elsewhere bf16 is emulated and slower, so
it is used only where it is native.
"""

from __future__ import annotations

import torch


def native_bf16() -> bool:
    """Whether the device training runs on computes bf16 natively."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return _cpu_has("_is_avx512_bf16_supported") or _cpu_has("_is_amx_tile_supported")


def use_bf16(mixed_precision: bool) -> bool:
    """bf16 autocast for this run: allowed by the operator and native here."""
    return mixed_precision and native_bf16()


def _cpu_has(probe: str) -> bool:
    # Private torch probes (stable since 2.1); a torch without one just means "no".
    check = getattr(torch.cpu, probe, None)
    return bool(check()) if check else False
