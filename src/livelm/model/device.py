"""Device and precision choice: CUDA when present, bf16 autocast where the hardware has it."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else the CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype_for(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype to use on `device`, or None for plain fp32.

    `precision` is `auto` (bf16 where the hardware supports it), `bf16` or `fp32`.
    """
    if precision == "fp32":
        return None
    supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
    if precision == "bf16":
        if not supported:
            raise ValueError(f"--precision bf16: {device} does not support bf16")
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"--precision must be auto, bf16 or fp32, not {precision!r}")
    return torch.bfloat16 if supported else None
