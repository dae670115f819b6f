"""MiniLM embeddings of rated texts, cached on disk: the predictor's inputs x.

`embed_texts` calls `firm.objectives.minilm.embed` (all-MiniLM-L6-v2, unit-norm, 384-dim) in
chunks and keeps the result in one safetensors file per (model name, texts), named by the sha256
of both, under `firm.cache.cache_dir() / "embeddings"`, so that every run on the same texts embeds
them once. A cache file that cannot be read or has the wrong shape is recomputed and overwritten; files are written atomically, so concurrent
runs never read half a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import safetensors.torch
import torch

from firm.atomic import write_atomic
from firm.cache import cache_dir as firm_cache_dir
from firm.objectives import minilm

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
CHUNK = 256
"""Texts per call to `minilm.embed` (one step of the progress bar)."""


def cache_key(texts: Sequence[str], model: str = EMBEDDING_MODEL) -> str:
    """sha256 (hex) of the model name and the texts in order (JSON-encoded, so no two lists share a key)."""
    return hashlib.sha256(json.dumps([model, list(texts)], ensure_ascii=False).encode("utf-8")).hexdigest()


def _load(path: Path, n: int) -> torch.Tensor | None:
    """The cached [n, EMBEDDING_DIM] tensor at `path`, or None if missing, unreadable or of another shape."""
    if not path.is_file():
        return None
    try:
        vectors = safetensors.torch.load_file(str(path))["embeddings"]
    except Exception:  # a truncated or foreign file: recompute it
        return None
    return vectors if vectors.shape == (n, EMBEDDING_DIM) and vectors.dtype == torch.float32 else None


def embed_texts(
    texts: Sequence[str], *, device: torch.device | str = "cpu", cache_dir: Path | None = None, progress: bool = True
) -> torch.Tensor:
    """Unit-norm MiniLM embeddings of `texts`, cached on disk.  -> [N, 384] float32 on the CPU

    `cache_dir` defaults to `firm.cache.cache_dir() / "embeddings"`. With `progress`, a tqdm bar
    (on stderr) counts the chunks when there is more than one.
    """
    n = len(texts)
    if n == 0:
        return torch.zeros(0, EMBEDDING_DIM)
    folder = cache_dir if cache_dir is not None else firm_cache_dir() / "embeddings"
    path = folder / f"{cache_key(texts)}.safetensors"
    cached = _load(path, n)
    if cached is not None:
        return cached
    starts: Iterable[int] = range(0, n, CHUNK)
    if progress and n > CHUNK:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"embedding {n} texts", unit="chunk", leave=False)
    chunks = [minilm.embed(list(texts[i : i + CHUNK]), device=device) for i in starts]  # each [<=CHUNK, 384]
    vectors = torch.cat(chunks).float().contiguous()  # [N, 384]
    folder.mkdir(parents=True, exist_ok=True)
    payload = safetensors.torch.save({"embeddings": vectors}, metadata={"model": EMBEDDING_MODEL, "texts": str(n)})
    write_atomic(path, payload)
    return vectors
