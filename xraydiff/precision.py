"""Numerical precision that fits the machine: bf16 autocast only where the hardware computes it natively.

On CPUs with AMX or AVX-512-BF16, and on GPUs with bf16 support, ``bf16-mixed`` roughly halves the
time of a training or sampling step. On CPUs without native bf16 (e.g. AVX2 only) the same autocast
emulates bf16 and is about ten times *slower* than float32, so a recipe that hard-codes bf16 is fast
on one machine and unusable on the next. ``precision: auto`` resolves once per process to
``bf16-mixed`` where it is native and to ``32-true`` everywhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AUTO = "auto"
BF16 = "bf16-mixed"
FP32 = "32-true"
PRECISIONS = (AUTO, FP32, BF16, "16-mixed")  # what every command offers


def cpu_has_native_bf16() -> bool:
    """True if this CPU executes bf16 matrix products natively (AMX tiles or AVX-512-BF16)."""
    import torch  # here, not at the top: `xraydiff --help` never imports torch

    cpu = torch.cpu
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, probe, lambda: False)()) for probe in probes)


def uses_cuda(accelerator: str | None) -> bool:
    """Whether a Lightning ``accelerator`` value selects a CUDA GPU on this machine."""
    import torch

    accelerator = (accelerator or "auto").lower()
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def resolve_precision(precision: str | int | None, accelerator: str | None = "auto") -> str | int | None:
    """``precision`` itself unless it is 'auto'; then 'bf16-mixed' on hardware with native bf16, else '32-true'."""
    import torch

    if precision != AUTO:
        return precision
    if uses_cuda(accelerator):
        return BF16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else FP32
    return BF16 if cpu_has_native_bf16() else FP32


def describe_hardware(accelerator: str | None = "auto") -> str:
    """A short description of what ``resolve_precision`` looked at, for the start-up message."""
    import torch

    if uses_cuda(accelerator) and torch.cuda.is_available():
        bf16 = "with" if torch.cuda.is_bf16_supported() else "without"
        return f"GPU {torch.cuda.get_device_name()} {bf16} bf16"
    native = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"CPU ({torch.backends.cpu.get_cpu_capability()}, {native})"


def autocast_dtype(precision: str | int | None) -> torch.dtype | None:
    """The autocast dtype of a resolved Lightning precision value (None: no autocast)."""
    import torch

    return {BF16: torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))


def autocast(device_type: str, precision: str | int | None) -> torch.autocast:
    """``torch.autocast`` on ``device_type`` for a resolved precision, where no Trainer sets it (benchmarks):
    the dtype of ``autocast_dtype``, disabled for 32-bit."""
    import torch

    dtype = autocast_dtype(precision)
    return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
