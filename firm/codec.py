"""The one place where adapters and updates are encoded for the wire (DESIGN.md section 5, `comm`).

Payloads are safetensors bytes: a JSON header with names, dtypes and shapes, then raw little-endian
tensor data. Every engine encodes with `encode` and counts `len()` of the result, so
`comm.upload_bytes` / `comm.download_bytes` are the bytes that actually travel, identical across
engines.
"""

from __future__ import annotations

import safetensors.torch
import torch

Adapter = dict[str, torch.Tensor]
"""Adapter tensors (or adapter-shaped deltas) by parameter name."""


def encode(tensors: Adapter) -> bytes:
    """Serialise named tensors (moved to CPU, made contiguous) to safetensors bytes."""
    return safetensors.torch.save({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()})


def decode(payload: bytes) -> Adapter:
    """Inverse of `encode`; tensors come back on CPU with their original dtypes and shapes."""
    return dict(safetensors.torch.load(payload))


def to_wire_dtype(tensors: Adapter, dtype: torch.dtype) -> Adapter:
    """Cast every tensor to the wire dtype (the adapter's own dtype: float32 by default)."""
    return {n: t.to(dtype) for n, t in tensors.items()}
