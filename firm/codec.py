"""The one place where adapters and updates are encoded for the wire (docs/design.md section 6, `comm`).

Payloads are safetensors bytes: a JSON header with names, dtypes and shapes, then raw little-endian
tensor data. Every engine encodes with `encode` and counts `len()` of the result, so
`comm.upload_bytes` / `comm.download_bytes` are the bytes that actually travel, identical across
engines.
"""

from __future__ import annotations

import json

import safetensors.torch
import torch

Adapter = dict[str, torch.Tensor]
"""Adapter tensors (or adapter-shaped deltas) by parameter name."""


def encode(tensors: Adapter, metadata: dict[str, str] | None = None) -> bytes:
    """Serialise named tensors (moved to CPU, made contiguous) to safetensors bytes.

    `metadata` (string -> string) goes into the header's `__metadata__` (compressed uploads,
    firm.compression); without it the bytes are exactly those of a plain adapter payload.
    """
    return safetensors.torch.save({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}, metadata=metadata)


def metadata(payload: bytes) -> dict[str, str]:
    """The header's `__metadata__` of a payload made by `encode` ({} if it has none).

    The header is an 8-byte little-endian length then that many bytes of JSON (the safetensors
    format); ValueError if the payload is too short or the header is not JSON.
    """
    if len(payload) < 8 or len(payload) < 8 + (size := int.from_bytes(payload[:8], "little")):
        raise ValueError(f"not a safetensors payload ({len(payload)} bytes, shorter than its header says)")
    try:
        header = json.loads(payload[8 : 8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"not a safetensors payload: unreadable header ({err})") from None
    found = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(found) if isinstance(found, dict) else {}


def decode(payload: bytes) -> Adapter:
    """Inverse of `encode`; tensors come back on CPU with their original dtypes and shapes, sorted by name
    (safetensors does not keep an order: sorting makes every float sum over the tensors repeatable)."""
    return dict(sorted(safetensors.torch.load(payload).items()))


def to_wire_dtype(tensors: Adapter, dtype: torch.dtype) -> Adapter:
    """Cast every tensor to the wire dtype (the adapter's own dtype: float32 by default)."""
    return {n: t.to(dtype) for n, t in tensors.items()}
