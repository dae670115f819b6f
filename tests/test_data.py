"""Prompt sources, the held-out set, partitioners, provocation mixing, client sampling and derived seeds."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from firm.client import prompt_batch, sample_clients
from firm.config import ConfigError, DataConfig
from firm.data import (
    BUILTIN_PROMPTS,
    FederatedPrompts,
    Prompt,
    PromptFileError,
    dirichlet_partition,
    federated_prompts,
    load_prompts,
    load_sources,
    provocative_counts,
    text_key,
    topic_partition,
)
from firm.prompts import PROVOCATIVE_PROMPTS
from firm.seeding import Stream, derive_seed
from firm.validation import load_config

needs_chatterbot = pytest.mark.skipif(importlib.util.find_spec("chatterbot_corpus") is None, reason="chatterbot-corpus")
needs_chitchat = pytest.mark.skipif(importlib.util.find_spec("chitchat_dataset") is None, reason="chitchat-dataset")

# The library default is the demo's mix; these tests start from plain IID without provocation mixing.
PLAIN = DataConfig(sources=("builtin",), partition="iid", provocative_ratios=())
MIXED = replace(PLAIN, sources=("chatterbot", "provocative"))  # 747 + 174 prompts, 22 topics


def train_prompts(split: FederatedPrompts) -> list[Prompt]:
    return [p for shard in split.clients for p in shard]


def check_split(split: FederatedPrompts, pool: list[Prompt], num_clients: int, num_eval: int) -> None:
    """Disjoint non-empty shards; eval disjoint from every shard; shards + eval = the pool."""
    train = train_prompts(split)
    assert len(split.clients) == num_clients
    assert all(split.clients), "every client holds at least one prompt"
    assert len(split.eval) == num_eval == len(set(split.eval))
    assert len(train) == len(set(train)), "shards are disjoint"
    assert not set(split.eval) & set(train), "no client trains on a held-out prompt"
    assert Counter([*train, *split.eval]) == Counter(pool)


# --------------------------------------------------------------------------- sources


def test_builtin_and_provocative_sources() -> None:
    builtin = load_prompts("builtin")
    assert [p.text for p in builtin] == list(BUILTIN_PROMPTS)
    assert {(p.topic, p.provocative, p.reference) for p in builtin} == {("general", False, None)}
    provocative = load_prompts("provocative")
    assert len(provocative) == len(PROVOCATIVE_PROMPTS) >= 150
    assert {(p.topic, p.provocative, p.reference) for p in provocative} == {("provocative", True, None)}


def test_provocative_prompts_have_no_duplicates() -> None:
    keys = [text_key(text) for text in PROVOCATIVE_PROMPTS]
    assert len(set(keys)) == len(keys), [k for k, n in Counter(keys).items() if n > 1]
    assert not set(keys) & {text_key(t) for t in BUILTIN_PROMPTS}
    assert all(text == " ".join(text.split()) and 6 <= len(text.split()) <= 30 for text in PROVOCATIVE_PROMPTS)


@needs_chatterbot
def test_chatterbot_source() -> None:
    prompts = load_prompts("chatterbot")
    topics = Counter(p.topic for p in prompts)
    # 2,026 conversations, 1 malformed; the 2,025 pairs have 747 distinct first lines (tech support: 1,050 pairs, 10 questions).
    assert len(prompts) == 747
    assert len(topics) == 21
    assert topics["trivia"] == 260 and topics["tech support"] == 10 and topics["ai"] == 60
    assert all(p.reference and not p.provocative for p in prompts)
    assert prompts[0] == Prompt("What is AI?", prompts[0].reference, "ai")
    assert len({text_key(p.text) for p in prompts}) == len(prompts)


@needs_chitchat
def test_chitchat_source() -> None:
    prompts = load_prompts("chitchat")
    assert len(prompts) == 3759
    assert {(p.topic, p.reference, p.provocative) for p in prompts} == {("chitchat", None, False)}
    assert all(3 <= len(p.text.split()) <= 40 for p in prompts)
    assert len({text_key(p.text) for p in prompts}) == len(prompts)
    assert prompts[0].text == "What's one thing your best friend doesn't know about you?"  # a starter question comes first


def test_load_sources_drops_repeats_and_caps_evenly() -> None:
    assert load_sources(["builtin", "builtin"]) == load_prompts("builtin")
    capped = load_sources(["builtin", "provocative"], max_per_source=10)
    assert len(capped) == 20
    assert [p.text for p in capped[:10]] == [BUILTIN_PROMPTS[i] for i in (0, 6, 12, 19, 25, 32, 38, 44, 51, 57)]  # i * 64 // 10
    assert load_sources(["builtin"], max_per_source=1000) == load_prompts("builtin")


@needs_chatterbot
def test_capped_chatterbot_keeps_topics() -> None:
    capped = load_sources(["chatterbot"], max_per_source=100)
    assert len(capped) == 100
    assert len({p.topic for p in capped}) >= 12  # evenly spaced, not the first 100 (which are ai and profile only)


def test_jsonl_prompt_file(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "hi", "reference": "hello"}\n\n{"prompt": "bye", "site": 3}\n'
        '{"prompt": "rant", "topic": "mean", "provocative": true}\n'
    )
    assert load_prompts(str(path)) == [Prompt("hi", "hello"), Prompt("bye"), Prompt("rant", None, "mean", True)]
    path.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(PromptFileError, match=r"p.jsonl:2: invalid JSON"):
        load_prompts(str(path))
    path.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(PromptFileError, match=r"p.jsonl:1: expected an object"):
        load_prompts(str(path))
    path.write_text('{"prompt": "a"}\n{"prompt": "b", "provocative": "yes"}\n')
    with pytest.raises(PromptFileError, match=r'p.jsonl:2: "provocative" must be true or false'):
        load_prompts(str(path))
    with pytest.raises(PromptFileError, match="not found"):
        load_prompts(str(tmp_path / "missing.jsonl"))


# --------------------------------------------------------------------------- held-out set and partitions


def test_builtin_iid_split_is_disjoint_complete_and_seeded() -> None:
    config = PLAIN
    split = federated_prompts(config, num_clients=3, num_eval=8, seed=0)
    check_split(split, load_prompts("builtin"), 3, 8)
    assert max(len(s) for s in split.clients) - min(len(s) for s in split.clients) <= 1
    assert federated_prompts(config, 3, 8, seed=0) == split
    assert federated_prompts(config, 3, 8, seed=1) != split


@needs_chatterbot
@pytest.mark.parametrize("partition", ["iid", "topic", "dirichlet"])
@pytest.mark.parametrize("ratios", [(), (0.0, 0.1, 0.3, 0.2), (0.0, 0.5, 1.0, 0.9)])
def test_every_partition(partition: str, ratios: tuple[float, ...]) -> None:
    config = replace(MIXED, partition=partition, provocative_ratios=ratios)  # type: ignore[arg-type]
    pool = load_sources(config.sources)
    split = federated_prompts(config, num_clients=4, num_eval=20, seed=0)
    assert split == federated_prompts(config, 4, 20, seed=0)
    assert split != federated_prompts(config, 4, 20, seed=1)
    assert split.eval == federated_prompts(replace(MIXED, partition="iid"), 4, 20, seed=0).eval  # independent of the partition
    if not ratios:
        check_split(split, pool, 4, 20)
        return
    train = train_prompts(split)
    assert all(split.clients) and not set(split.eval) & set(train) and set(train) <= set(pool)
    supply = [p for p in pool if p.provocative and p not in split.eval]
    for shard, ratio in zip(split.clients, ratios, strict=True):
        assert len(set(shard)) == len(shard)
        num_provocative = sum(p.provocative for p in shard)
        assert abs(num_provocative - ratio * len(shard)) <= 0.5  # the ratio, within rounding
    # Every non-provocative prompt is on exactly one client (unless the supply cap dropped some).
    plain = [p for p in train if not p.provocative]
    assert len(plain) == len(set(plain))
    uses = Counter(p for p in train if p.provocative)
    if sum(uses.values()) <= len(supply):
        assert len(train) == len(set(train)), "disjoint while the provocative supply lasts"
    else:
        assert min(uses[p] for p in supply) >= max(uses.values()) - 1, "reused as evenly as possible"


def test_eval_is_stratified_on_provocative() -> None:
    config = replace(PLAIN, sources=("builtin", "provocative"))  # 64 + 174 prompts: share 174 / 238
    split = federated_prompts(config, num_clients=2, num_eval=20, seed=3)
    assert sum(p.provocative for p in split.eval) == 15  # round(20 * 174 / 238) = round(14.62)
    split = federated_prompts(replace(config, eval_provocative_share=0.25), 2, 20, seed=3)
    assert sum(p.provocative for p in split.eval) == 5
    check_split(split, load_sources(config.sources), 2, 20)
    split = federated_prompts(replace(config, eval_provocative_share=0.0), 2, 20, seed=3)
    assert not any(p.provocative for p in split.eval)


@needs_chatterbot
def test_topic_partition_separates_topics() -> None:
    split = federated_prompts(replace(MIXED, partition="topic"), num_clients=5, num_eval=20, seed=0)
    owners: dict[str, set[int]] = {}
    for c, shard in enumerate(split.clients):
        for p in shard:
            owners.setdefault(p.topic, set()).add(c)
    assert all(len(clients) == 1 for clients in owners.values())
    assert len(owners) == 22
    # Round-robin by size: trivia (largest) -> client 0, provocative (174 - held out) -> client 1, coding -> client 2, ...
    assert {p.topic for p in split.clients[0]} >= {"trivia"} and {p.topic for p in split.clients[1]} >= {"provocative"}


def test_topic_partition_by_hand() -> None:
    topics = ["a", "b", "b", "c", "c", "c", "d"]  # sizes c 3, b 2, a 1, d 1 -> clients 0, 1, 0, 1
    assert topic_partition(topics, 2) == [[0, 3, 4, 5], [1, 2, 6]]


def mean_topic_kl(split: FederatedPrompts) -> float:
    """Mean over clients of KL(client topic distribution || the training pool's topic distribution)."""
    pool = Counter(p.topic for p in train_prompts(split))
    total = sum(pool.values())
    kls = []
    for shard in split.clients:
        counts = Counter(p.topic for p in shard)
        kls.append(sum(n / len(shard) * math.log((n / len(shard)) / (pool[t] / total)) for t, n in counts.items()))
    return float(np.mean(kls))


@needs_chatterbot
def test_dirichlet_small_alpha_is_more_skewed() -> None:
    def skew(alpha: float) -> float:
        config = replace(PLAIN, sources=("chatterbot",), partition="dirichlet", dirichlet_alpha=alpha)
        return float(np.mean([mean_topic_kl(federated_prompts(config, 5, 20, seed)) for seed in range(3)]))

    small, medium, large = skew(0.05), skew(1.0), skew(100.0)
    assert small > medium > large
    assert small > 1.0 and large < 0.1


def test_dirichlet_fills_empty_clients() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):  # one topic, alpha tiny: nearly all prompts go to one client before the top-up
        shards = dirichlet_partition(["t"] * 6, num_clients=5, alpha=0.01, rng=rng)
        assert all(shards) and sorted(i for s in shards for i in s) == list(range(6))


def test_provocative_counts_by_hand() -> None:
    assert provocative_counts(30, 0.25, supply=100) == (30, 10)  # 10 / (30 + 10) = 0.25
    assert provocative_counts(30, 0.0, supply=100) == (30, 0)
    assert provocative_counts(30, 0.5, supply=10) == (10, 10)  # wants 30 > 10: keep round(10 * 0.5 / 0.5) = 10 plain
    assert provocative_counts(30, 0.8, supply=10) == (2, 10)  # round(10 * 0.2 / 0.8) = round(2.5) = 2 (half to even)
    assert provocative_counts(30, 1.0, supply=100) == (0, 30)
    assert provocative_counts(30, 1.0, supply=7) == (0, 7)


# --------------------------------------------------------------------------- config errors


BAD_DATA = [
    (['data.sources=["nope"]'], "data.sources[0]: unknown source 'nope' and no such file; allowed: builtin, chatterbot"),
    (["data.sources=[]"], "data.sources: at least one source is required"),
    (["data.partition=random"], "data.partition: got 'random', allowed: one of 'iid', 'topic', 'dirichlet'"),
    (["data.dirichlet_alpha=0"], "data.dirichlet_alpha: must be > 0, got 0.0"),
    (["data.max_prompts_per_source=-1"], "data.max_prompts_per_source: must be >= 0"),
    (["data.provocative_ratios=[0, 1.5, 0, 0]"], "data.provocative_ratios[1]: must be in [0, 1], got 1.5"),
    (["data.eval_provocative_share=2"], "data.eval_provocative_share: must be <= 1"),
    (
        ["eval.num_prompts=61"],
        "data.sources: 64 prompts are too few for eval.num_prompts = 61 held-out prompts plus one per client",
    ),
    (["data.max_prompts_per_source=10"], "data.sources: 10 prompts are too few for eval.num_prompts = 8"),
    (
        ["data.partition=topic"],
        "data.partition: 'topic' needs at least federation.num_clients = 4 topics, the training prompts have 1",
    ),
    (["data.provocative_ratios=[0, 0.5, 0, 0]"], "data.provocative_ratios: ratios above 0 need provocative training prompts"),
    (["data.eval_provocative_share=0.5"], "data.eval_provocative_share: 0.5 of eval.num_prompts = 8 asks for 4 provocative"),
]


# These start from the plain setting (builtin prompts, IID, no provocation mixing, 8 held out),
# not from the demo's default mix.
PLAIN_OVERRIDES = ['data.sources=["builtin"]', "data.partition=iid", "data.provocative_ratios=[]", "eval.num_prompts=8"]


@pytest.mark.parametrize(("overrides", "message"), BAD_DATA)
def test_bad_data_config(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [*PLAIN_OVERRIDES, *overrides])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_too_few_non_provocative_prompts_for_mixing() -> None:
    base = [
        *PLAIN_OVERRIDES,
        'data.sources=["builtin", "provocative"]',
        "data.provocative_ratios=[1, 1, 1, 1]",
        "data.eval_provocative_share=0.0",
    ]
    assert load_config(None, [*base, "eval.num_prompts=60"]).eval.num_prompts == 60  # 4 left: one per client
    with pytest.raises(ConfigError, match=r"data\.provocative_ratios: 3 non-provocative training prompts are too few"):
        load_config(None, [*base, "eval.num_prompts=61"])


def test_bad_prompt_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": \n')
    with pytest.raises(ConfigError, match=r"data.sources: .*p.jsonl:1: invalid JSON"):
        load_config(None, [f"data.sources=[{str(path)!r}]".replace("'", '"')])


# --------------------------------------------------------------------------- clients


def test_client_sampling_and_batches_are_derived_from_seed() -> None:
    ids = sample_clients(seed=0, round_idx=1, num_clients=10, clients_per_round=4)
    assert ids == sorted(set(ids)) and len(ids) == 4 and all(0 <= i < 10 for i in ids)
    assert ids == sample_clients(0, 1, 10, 4)
    assert any(sample_clients(0, r, 10, 4) != ids for r in range(2, 6))
    shard = [Prompt(str(i)) for i in range(10)]
    batch = prompt_batch(shard, 0, 1, 2, 0, size=4)
    assert len({p.text for p in batch}) == 4  # without replacement when the shard is large enough
    assert batch == prompt_batch(shard, 0, 1, 2, 0, size=4)
    assert len(prompt_batch(shard[:2], 0, 1, 2, 0, size=4)) == 4  # with replacement when it is not
    assert derive_seed(Stream.EVAL, 0, 1, 2) != derive_seed(Stream.EVAL, 0, 2, 1)
