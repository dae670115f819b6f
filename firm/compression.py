"""Compressed client uploads with error feedback: 8-bit quantisation and top-k sparsification.

A client's upload (its adapter-shaped delta, or FMGDA's M per-objective deltas) can travel
compressed (`compression.kind`, docs/compression.md). Both engines call `encode_uploads` where
the client's payloads are encoded and `decode_upload` where the server reads them, so the server
decodes each payload back to an adapter-shaped delta in the adapter's dtype before the screen
(`firm.robust`) and the aggregator: algorithms and aggregation rules are unchanged.

Schemes, per tensor x of n values (flattened, row-major):
- `int8`: symmetric 8-bit quantisation, one float32 scale per block of `compression.block` values
  (0 = one block for the whole tensor): s = max|x_block| / 127, q = round(x / s) in [-127, 127],
  decoded as q * s, so |x - q s| <= s / 2 per entry; a block of zeros has s = 0 and decodes to 0.
  Bytes: n + 4 * ceil(n / block) per tensor.
- `topk`: the k = min(n, max(1, ceil(f n))) entries of largest |x| (f = `compression.topk`), sent
  as int32 indices and float32 values (8 k bytes per tensor); the others decode to 0. The values
  stay float32 (no 8-bit values on top: one scheme at a time keeps the error analysis simple).
- `none`: the plain float payload of `firm.codec.encode`, byte for byte.

A compressed payload is one safetensors file with two flat tensors (`q` int8 + `scales` float32,
or `indices` int32 + `values` float32: every tensor's part, concatenated in name order) and its
layout in the header metadata (`firm.compression`: kind, block, and each tensor's name, dtype,
shape and k), so the header costs about one line of JSON per tensor.

Error feedback (Seide et al. 2014, "1-bit SGD"; Karimireddy et al. 2019, "Error feedback fixes
SignSGD", EF-SGD): the client compresses x = delta + residual, sends C(x), and keeps
residual = x - decode(C(x)) for its next round, so what compression dropped is sent later
instead of lost: sum_t sent_t = sum_t delta_t - residual_T. The residual lives in the client's
state (`RESIDUAL` keys of `ClientUpdate.client_state`, kept by the engines across rounds and in
checkpoints) and never travels. Deviation: a non-finite residual entry (a client whose delta
was NaN/Inf) is reset to 0 so the poison is not carried into later rounds; the non-finite
payload itself still decodes to NaN, and the server's screen rejects it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from firm.codec import Adapter, decode, encode, metadata
from firm.config import CompressionConfig, ConfigError

RESIDUAL = "compression.residual"
"""Prefix of the error-feedback residuals in a client's state: `compression.residual.<payload>.<tensor name>`."""

META = "firm.compression"
"""Header metadata key of a compressed payload; a payload without it is a plain `firm.codec` one."""

PARTS = {"int8": {"q": torch.int8, "scales": torch.float32}, "topk": {"indices": torch.int32, "values": torch.float32}}
"""The two flat tensors of a compressed payload, by kind, with their dtypes."""

LEVELS = 127
"""int8 levels on each side of zero (symmetric: -128 is never used)."""


class CompressedPayloadError(ValueError):
    """A payload that does not decode, or whose layout and tensors do not fit together (a corrupt or foreign upload)."""


# --------------------------------------------------------------------------- one tensor


def num_blocks(n: int, block: int) -> int:
    """Scales of an int8-quantised tensor of n values: ceil(n / block), one per tensor if block = 0."""
    return math.ceil(n / block) if block > 0 else min(n, 1)


def quantize_int8(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric 8-bit quantisation of a flat float32 tensor, blockwise.

    x [n] -> (q [n] int8, scales [num_blocks(n, block)] float32), s = max|x_block| / 127 and
    q = round(x / s) (0 where s = 0). A block with a NaN or Inf gets s = NaN, so it decodes to NaN.
    """
    n = x.numel()
    size = block if block > 0 else max(n, 1)
    blocks = num_blocks(n, block)
    padded = torch.zeros(blocks * size, dtype=torch.float32)
    padded[:n] = x
    padded = padded.view(blocks, size)  # [num_blocks, block]: zero padding does not change max|x|
    amax = padded.abs().amax(dim=1) if blocks else torch.zeros(0)
    scales = torch.where(torch.isfinite(amax), amax / LEVELS, torch.full_like(amax, math.nan))  # [num_blocks]
    usable = (scales > 0)[:, None]  # NaN > 0 is False: a non-finite block sends q = 0 and s = NaN
    q = torch.where(usable, torch.round(padded / torch.where(usable, scales[:, None], 1.0)), 0.0)
    return q.clamp(-LEVELS, LEVELS).to(torch.int8).reshape(-1)[:n], scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, block: int) -> torch.Tensor:
    """Inverse of `quantize_int8` up to the rounding: q [n] int8, scales [num_blocks] -> x [n] float32."""
    n = q.numel()
    size = block if block > 0 else max(n, 1)
    padded = torch.zeros(scales.numel() * size, dtype=torch.float32)
    padded[:n] = q.to(torch.float32)
    return (padded.view(-1, size) * scales[:, None]).reshape(-1)[:n]


def topk_count(n: int, fraction: float) -> int:
    """k = min(n, max(1, ceil(fraction * n))) entries kept of a tensor of n values (0 if n = 0)."""
    return min(n, max(1, math.ceil(fraction * n))) if n else 0


def sparsify_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k entries of largest |x| of a flat float32 tensor: (indices [k] int32, ascending; values [k] float32)."""
    indices = torch.topk(x.abs(), k, sorted=False).indices.sort().values  # NaN counts as largest: it is sent
    return indices.to(torch.int32), x[indices]


def densify_topk(indices: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `sparsify_topk` on the kept entries: zeros elsewhere, x [n] float32."""
    x = torch.zeros(n, dtype=torch.float32)
    x[indices.to(torch.int64)] = values
    return x


def topk_compress(vector: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """A flat tensor's k largest-magnitude entries (k clamped to 1..n) as FedCMOO's probe sends them:
    {"values": [k] float32, "indices": [k] int32, ascending} (`sparsify_topk`, no error feedback)."""
    indices, values = sparsify_topk(vector.to(torch.float32), max(1, min(k, vector.numel())))
    return {"values": values, "indices": indices}


def topk_decompress(values: torch.Tensor, indices: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of `topk_compress` on the kept entries, as float64 [size] for the server's sums."""
    return densify_topk(indices, values.to(torch.float32), size).to(torch.float64)


# --------------------------------------------------------------------------- one payload


def compress(tensors: Adapter, config: CompressionConfig) -> bytes:
    """One adapter-shaped payload (float32 values of any named tensors) -> compressed safetensors bytes."""
    layout: list[dict[str, Any]] = []
    first: list[torch.Tensor] = []  # per tensor: q [n] int8, or indices [k] int32
    second: list[torch.Tensor] = []  # per tensor: scales [num_blocks] float32, or values [k] float32
    for name in sorted(tensors):
        x = tensors[name].detach().to("cpu", torch.float32).reshape(-1)  # [n]
        entry: dict[str, Any] = {"name": name, "shape": list(tensors[name].shape)}
        if config.kind == "int8":
            a, b = quantize_int8(x, config.block)
        else:
            entry["k"] = topk_count(x.numel(), config.topk)
            a, b = sparsify_topk(x, entry["k"])
        first.append(a)
        second.append(b)
        layout.append(entry)
    (name_a, dtype_a), (name_b, dtype_b) = PARTS[config.kind].items()
    flat = {
        name_a: torch.cat(first) if first else torch.zeros(0, dtype=dtype_a),
        name_b: torch.cat(second) if second else torch.zeros(0, dtype=dtype_b),
    }
    header = {"kind": config.kind, "block": config.block, "tensors": layout}
    return encode(flat, {META: json.dumps(header, separators=(",", ":"))})


def _layout(payload: bytes) -> tuple[str, int, list[tuple[str, tuple[int, ...], int]], dict[str, torch.Tensor]]:
    """(kind, block, [(name, shape, k)], flat tensors) of a compressed payload; CompressedPayloadError if unreadable."""
    try:
        header = json.loads(metadata(payload)[META])
        kind, block = str(header["kind"]), int(header["block"])
        layout = [(str(e["name"]), tuple(int(s) for s in e["shape"]), int(e.get("k", 0))) for e in header["tensors"]]
        flat = decode(payload)
    except Exception as err:  # JSON, key and type errors of the layout; safetensors' own error type for a corrupt body
        raise CompressedPayloadError(f"compressed payload: unreadable ({type(err).__name__}: {err})") from None
    if kind not in PARTS or block < 0:
        raise CompressedPayloadError(f"compressed payload: unknown kind {kind!r} or block {block}")
    for part, dtype in PARTS[kind].items():
        if part not in flat or flat[part].dtype != dtype or flat[part].dim() != 1:
            raise CompressedPayloadError(f"compressed payload: no flat {dtype} tensor {part!r}")
    return kind, block, layout, flat


def decompress(payload: bytes) -> dict[str, torch.Tensor]:
    """Inverse of `compress` up to the compression error: float32 tensors by name, in their shapes.

    Raises CompressedPayloadError (a ValueError) when the layout and the tensors disagree.
    """
    kind, block, layout, flat = _layout(payload)
    out: dict[str, torch.Tensor] = {}
    first, second = (flat[part] for part in PARTS[kind])
    offset = offset2 = 0  # into q / indices, and into scales / values
    for name, shape, k in layout:
        n = math.prod(shape)
        if kind == "int8":
            take, take2 = n, num_blocks(n, block)
        else:
            take = take2 = k
            if not 0 <= k <= n:
                raise CompressedPayloadError(f"compressed payload: {name}: k = {k} outside 0..{n}")
        if offset + take > first.numel() or offset2 + take2 > second.numel():
            raise CompressedPayloadError(f"compressed payload: {name}: data shorter than the layout")
        a, b = first[offset : offset + take], second[offset2 : offset2 + take2]
        if kind == "int8":
            x = dequantize_int8(a, b, block)
        else:
            if k and (int(a.min()) < 0 or int(a.max()) >= n):
                raise CompressedPayloadError(f"compressed payload: {name}: index outside 0..{n - 1}")
            x = densify_topk(a, b, n)
        out[name] = x.reshape(shape)
        offset, offset2 = offset + take, offset2 + take2
    if offset != first.numel() or offset2 != second.numel():
        raise CompressedPayloadError("compressed payload: more data than the layout describes")
    return out


# --------------------------------------------------------------------------- a client's uploads


def encode_uploads(
    uploads: Sequence[Adapter], config: CompressionConfig, client_state: Mapping[str, Any]
) -> tuple[list[bytes], dict[str, torch.Tensor]]:
    """A client's payloads for the wire, and the error-feedback residuals to keep in its state.

    kind `none`: `firm.codec.encode(upload)` per upload, no residual (today's bytes exactly).
    Otherwise payload i = compress(upload_i + residual_i), residual_i from `client_state`
    (`RESIDUAL.<i>.<name>`, zero on the first round); with `error_feedback` the new residual_i =
    that sum - what the server will decode, returned under the same keys, else nothing is kept.
    """
    if config.kind == "none":
        return [encode(upload) for upload in uploads], {}
    payloads: list[bytes] = []
    residuals: dict[str, torch.Tensor] = {}
    for i, upload in enumerate(uploads):
        target = {}
        for name, delta in upload.items():
            x = delta.detach().to("cpu", torch.float32)
            carried = client_state.get(f"{RESIDUAL}.{i}.{name}") if config.error_feedback else None
            target[name] = x + carried.to(torch.float32) if isinstance(carried, torch.Tensor) else x
        payload = compress(target, config)
        payloads.append(payload)
        if config.error_feedback:
            sent = decompress(payload)
            for name, x in target.items():
                # what the server aggregates is `sent` cast to the adapter's dtype: the residual is measured against that
                left = x - sent[name].to(upload[name].dtype).to(torch.float32)
                residuals[f"{RESIDUAL}.{i}.{name}"] = torch.where(torch.isfinite(left), left, 0.0)
    return payloads, residuals


def decode_upload(payload: bytes, dtypes: Mapping[str, torch.dtype] | None = None) -> Adapter:
    """The server's view of one payload: a plain one as sent, a compressed one decoded to adapter-shaped tensors.

    `dtypes` (name -> dtype, e.g. the global adapter's) casts the decoded float32 tensors back to
    the adapter's dtype, so the screen's dtype check compares like with like; a name it does not
    know is left float32 (the screen then rejects the update for its names).
    Raises CompressedPayloadError (a ValueError) for a payload that does not decode, so an engine
    can drop that client as it drops any malformed reply.
    """
    if META not in metadata(payload):
        try:
            return decode(payload)
        except Exception as err:  # safetensors' own error type is not a ValueError
            raise CompressedPayloadError(f"payload: unreadable ({type(err).__name__}: {err})") from None
    tensors = decompress(payload)
    if dtypes is None:
        return tensors
    return {name: t.to(dtypes[name]) if name in dtypes else t for name, t in tensors.items()}


def validate_config(comp: CompressionConfig) -> None:
    """The compression.* checks."""
    if comp.block < 0:
        raise ConfigError(f"compression.block: must be >= 0 (0 = one scale per tensor), got {comp.block}")
    if not 0 < comp.topk <= 1:
        raise ConfigError(f"compression.topk: must be a fraction in (0, 1], got {comp.topk}")
