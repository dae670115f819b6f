"""Harmlessness: 1 - the highest toxicity probability of the Jigsaw toxic-comment BiLSTM.

reward = 1 - max_k p_k(completion), in [0, 1], over the six Jigsaw labels (toxic, severe_toxic,
obscene, threat, insult, identity_hate). The prompt is not read: a reply is judged on its own.

Source: the Keras model shipped in `toxic-comment-classifier` 0.3.0 (PyPI; `toxic_classifier/model/`
holds `model.weights.h5` and the pickled Keras `Tokenizer`), trained on the Jigsaw Toxic Comment
Classification data. Architecture (its `model.py`): Embedding(20000, 50) -> Bidirectional(LSTM(50),
return_sequences) -> GlobalMaxPooling1D -> Dense(50, relu) -> Dropout -> Dense(6, sigmoid).

Port to torch, read with h5py (the package itself imports TensorFlow, so it is never imported):

- Keras LSTM gates are ordered i, f, c, o, as torch's i, f, g, o: `weight_ih = kernel.T`,
  `weight_hh = recurrent_kernel.T`, `bias_ih = bias`, `bias_hh = 0` (Keras has one bias).
- Keras here has no masking, so the LSTM runs over the full pre-padded length-100 sequence,
  padding included, exactly as `nn.LSTM` does over the padded batch. Keras re-reverses the
  backward direction's outputs while torch does not; max-pooling over time makes that irrelevant.
- Dense kernels are stored (in, out): `nn.Linear.weight = kernel.T`.
- Tokenizer: the pickle is read by a restricted unpickler that maps only the Keras `Tokenizer`
  class to an inert stub and a few container types; `texts_to_sequences` and `pad_sequences`
  (pre-padding, pre-truncation to 100) are re-implemented from Keras 3's legacy preprocessing code.

Deviations: none intended; dropout is inactive at inference in both. tests/test_scorers.py checks
the port against a NumPy LSTM written out step by step over the same h5 weights.

Known bias of the model itself: second-person address raises the toxic and insult scores even when
kind ("You are a wonderful person, thank you" scores 0.67, "Thank you so much, that was really
helpful." 0.997, "You are a stupid idiot and I hate you" 0.003).
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

MAXLEN = 100
VOCAB_SIZE = 20000
EMBEDDING_DIM = 50
HIDDEN = 50
LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
BATCH_SIZE = 256
INSTALL = "pip install --no-deps toxic-comment-classifier==0.3.0"


class ToxicBiLSTM(nn.Module):
    """The Keras model's inference graph in torch."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, EMBEDDING_DIM)
        self.lstm = nn.LSTM(EMBEDDING_DIM, HIDDEN, batch_first=True, bidirectional=True)
        self.hidden = nn.Linear(2 * HIDDEN, 50)
        self.head = nn.Linear(50, len(LABELS))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids  # [B, MAXLEN] int64 -> probs  # [B, 6]"""
        states, _ = self.lstm(self.embedding(ids))  # [B, MAXLEN, 2 * HIDDEN], forward then backward
        pooled = states.max(dim=1).values  # [B, 2 * HIDDEN]
        return torch.sigmoid(self.head(torch.relu(self.hidden(pooled))))


# --------------------------------------------------------------------------- tokenizer


class KerasTokenizerState:
    """Stands in for the pickled Keras `Tokenizer`: holds its attributes, has no behaviour."""


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the Keras Tokenizer class (to the stub) and the containers its state uses."""

    ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("builtins", "int"): int,  # the default factory of Tokenizer.word_docs / index_docs
    }

    def find_class(self, module: str, name: str) -> Any:
        # Keras has moved the class over versions (keras.preprocessing.text, keras_preprocessing.text,
        # keras.src.legacy.preprocessing.text): accept any of them, always resolved to the inert stub.
        if name == "Tokenizer" and "keras" in module:
            return KerasTokenizerState
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"tokenizer pickle references {module}.{name}, which is not allowed")


def load_tokenizer(path: Path) -> KerasTokenizerState:
    with path.open("rb") as f:
        state = RestrictedUnpickler(f).load()
    if not isinstance(state, KerasTokenizerState):
        raise pickle.UnpicklingError(f"{path} does not hold a Keras Tokenizer")
    return state


def text_to_word_sequence(text: str, filters: str, lower: bool, split: str) -> list[str]:
    """Keras `text_to_word_sequence`: lowercase, map every filter character to `split`, split, drop empties."""
    if lower:
        text = text.lower()
    table: dict[str, str | int | None] = dict.fromkeys(filters, split)
    text = text.translate(str.maketrans(table))
    return [w for w in text.split(split) if w]


def texts_to_sequences(tokenizer: KerasTokenizerState, texts: list[str]) -> list[list[int]]:
    """Keras `Tokenizer.texts_to_sequences`: ids >= num_words become the OOV id if there is one, else are dropped."""
    t: Any = tokenizer
    word_index: dict[str, int] = t.word_index
    num_words: int | None = t.num_words
    oov_index = word_index.get(t.oov_token) if t.oov_token is not None else None
    sequences = []
    for text in texts:
        if t.char_level:
            words: Any = text.lower() if t.lower else text
        else:
            words = text_to_word_sequence(text, t.filters, t.lower, t.split)
        ids = []
        for w in words:
            i = word_index.get(w)
            if i is not None:
                if num_words and i >= num_words:
                    if oov_index is not None:
                        ids.append(oov_index)
                else:
                    ids.append(i)
            elif oov_index is not None:  # Keras tests oov_token and would append None for an unindexed token
                ids.append(oov_index)
        sequences.append(ids)
    return sequences


def pad_sequences(sequences: list[list[int]], maxlen: int = MAXLEN) -> np.ndarray:
    """Keras `pad_sequences` defaults: keep the last `maxlen` ids, left-pad with 0.  -> [N, maxlen] int64"""
    out = np.zeros((len(sequences), maxlen), dtype=np.int64)
    for row, seq in enumerate(sequences):
        kept = seq[-maxlen:]
        if kept:
            out[row, maxlen - len(kept) :] = kept
    return out


# --------------------------------------------------------------------------- loading


def package_dir() -> Path:
    """The installed toxic_classifier folder, found without importing it (it imports TensorFlow)."""
    spec = importlib.util.find_spec("toxic_classifier")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the harmlessness objective needs the package toxic-comment-classifier: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def load_weights(model: ToxicBiLSTM, h5_path: Path) -> None:
    import h5py

    with h5py.File(h5_path, "r") as f:

        def tensor(key: str) -> torch.Tensor:
            return torch.from_numpy(np.asarray(f[key], dtype=np.float32))

        bi = "layers/bidirectional"
        params = {
            "embedding.weight": tensor("layers/embedding/vars/0"),
            "hidden.weight": tensor("layers/dense/vars/0").T,
            "hidden.bias": tensor("layers/dense/vars/1"),
            "head.weight": tensor("layers/dense_1/vars/0").T,
            "head.bias": tensor("layers/dense_1/vars/1"),
        }
        for suffix, direction in (("", "forward_layer"), ("_reverse", "backward_layer")):
            kernel, recurrent, bias = (tensor(f"{bi}/{direction}/cell/vars/{i}") for i in range(3))
            params[f"lstm.weight_ih_l0{suffix}"] = kernel.T  # [4H, 50]
            params[f"lstm.weight_hh_l0{suffix}"] = recurrent.T  # [4H, H]
            params[f"lstm.bias_ih_l0{suffix}"] = bias
            params[f"lstm.bias_hh_l0{suffix}"] = torch.zeros_like(bias)
    model.load_state_dict(params, strict=True)


@functools.cache
def _load(device: torch.device) -> tuple[KerasTokenizerState, ToxicBiLSTM, torch.device]:
    folder = package_dir() / "model"
    model = ToxicBiLSTM()
    load_weights(model, folder / "model.weights.h5")
    return load_tokenizer(folder / "tokenizer.pickle"), model.to(device).eval(), device


def toxicity(texts: list[str], device: torch.device | str = "cpu") -> np.ndarray:
    """Label probabilities of each text, with the model on `device`.  -> [N, 6] float32, columns as LABELS"""
    tokenizer, model, device = _load(torch.device(device))
    ids = pad_sequences(texts_to_sequences(tokenizer, texts))  # [N, MAXLEN]
    chunks = [np.zeros((0, len(LABELS)), dtype=np.float32)]
    with torch.inference_mode():
        for start in range(0, len(ids), BATCH_SIZE):
            batch = torch.from_numpy(ids[start : start + BATCH_SIZE]).to(device)
            chunks.append(model(batch).float().cpu().numpy())
    return np.concatenate(chunks)


def harmlessness(prompts: list[str], completions: list[str], *, device: torch.device | str = "cpu", **kwargs: Any) -> list[float]:
    """1 - max label probability of each completion (the model runs on `device`, the run's)."""
    probs = toxicity(completions, device)  # [S, 6]
    return (1.0 - probs.max(axis=1, initial=0.0)).tolist()
