"""The compute dtype of the policy (`model.compute_dtype`): float32, or bfloat16 where the hardware is fast at it.

With bfloat16 the frozen base weights are stored in bfloat16 and every forward of the base (the
rollout, the reference, the gradient forwards) and the backward through it run in bfloat16.
What stays in float32: the LoRA parameters and their gradients (peft casts each LoRA layer's
input to the adapter's dtype), the optimizer state, the LM head of the log-prob computation
(`firm.logprobs` upcasts the final hidden states and uses a float32 copy of the head, so
log-probabilities, the KL and the importance ratio are float32 functions of bfloat16 hidden
states), the scorers; the Gram matrix and the weighting solve are float64 as always. No
`torch.autocast` is used: storing the frozen base in bfloat16 avoids recasting its weights at
every op (autocast caches casts only for weights that require grad), and peft's own input cast
keeps the LoRA branch in float32.

`auto` picks bfloat16 only where the device runs it natively, detected rather than assumed:
- CUDA: `torch.cuda.is_bf16_supported(including_emulation=False)` (Ampere and newer);
- a CPU with AVX512-BF16 or AMX-BF16 (x86) or the BF16 extension (Arm), read from
  `torch.cpu.get_capabilities()`;
- float32 anywhere else (older CPUs and GPUs, MPS). Without those instructions a CPU runs bfloat16
  emulated, much slower than float32 (docs/performance.md measures it), so an explicit
  `bfloat16` there is honoured with a warning; a device that cannot hold bfloat16 at all refuses it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch

ComputeDtypeName = Literal["auto", "float32", "bfloat16"]

CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
"""`torch.cpu.get_capabilities()` flags that mean native bfloat16 arithmetic (x86 AVX-512 / AMX, Arm)."""


class PrecisionError(ValueError):
    """The requested compute dtype cannot run on the device (one line, for the CLI)."""


@dataclass(frozen=True)
class DtypeChoice:
    """The resolved compute dtype and why it was chosen (printed once, written to summary.json)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def as_dict(self) -> dict[str, str]:
        return {"dtype": self.name, "reason": self.reason}


def cpu_bf16_features() -> list[str]:
    """The native-bfloat16 features this CPU reports (empty: bfloat16 would be emulated)."""
    caps = torch.cpu.get_capabilities()
    return [flag for flag in CPU_BF16_FEATURES if caps.get(flag)]


def _cuda_bf16(device: torch.device, *, native: bool) -> bool:
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=not native))


def _mps_bf16() -> bool:
    try:
        torch.ones(1, dtype=torch.bfloat16, device="mps").sum().item()
    except (RuntimeError, TypeError):
        return False
    return True


def choose_compute_dtype(spec: str, device: torch.device) -> DtypeChoice:
    """Resolve `model.compute_dtype` on `device` (module docstring); raises PrecisionError if impossible."""
    if spec not in ("auto", "float32", "bfloat16"):
        raise PrecisionError(f"model.compute_dtype: {spec!r}; allowed: auto, float32, bfloat16")
    if spec == "float32":
        return DtypeChoice(torch.float32, "model.compute_dtype = float32")
    if device.type == "cuda":
        native = _cuda_bf16(device, native=True)
        if spec == "auto":
            if native:
                return DtypeChoice(torch.bfloat16, f"auto: {torch.cuda.get_device_name(device)} supports bfloat16")
            return DtypeChoice(torch.float32, f"auto: {torch.cuda.get_device_name(device)} has no native bfloat16")
        if not native and not _cuda_bf16(device, native=False):
            raise PrecisionError(
                f"model.compute_dtype = bfloat16: {torch.cuda.get_device_name(device)} cannot run bfloat16; use auto or float32"
            )
        return DtypeChoice(torch.bfloat16, "model.compute_dtype = bfloat16" + ("" if native else " (emulated on this GPU)"))
    if device.type == "cpu":
        features = cpu_bf16_features()
        if spec == "auto":
            if features:
                return DtypeChoice(torch.bfloat16, f"auto: the CPU reports {', '.join(features)}")
            return DtypeChoice(torch.float32, "auto: the CPU reports no AVX512-BF16, AMX-BF16 or Arm BF16")
        if not features:
            warnings.warn(
                "model.compute_dtype = bfloat16 on a CPU without AVX512-BF16, AMX-BF16 or Arm BF16: "
                "bfloat16 runs emulated there, usually several times slower than float32",
                RuntimeWarning,
                stacklevel=2,
            )
            return DtypeChoice(torch.bfloat16, "model.compute_dtype = bfloat16 (emulated: the CPU has no native bfloat16)")
        return DtypeChoice(torch.bfloat16, f"model.compute_dtype = bfloat16 (the CPU reports {', '.join(features)})")
    if device.type == "mps":
        if spec == "auto":
            return DtypeChoice(torch.float32, "auto: float32 on MPS")
        if not _mps_bf16():
            raise PrecisionError("model.compute_dtype = bfloat16: this MPS device cannot run bfloat16; use auto or float32")
        return DtypeChoice(torch.bfloat16, "model.compute_dtype = bfloat16")
    if spec == "auto":
        return DtypeChoice(torch.float32, f"auto: float32 on {device.type}")
    return DtypeChoice(torch.bfloat16, "model.compute_dtype = bfloat16")
