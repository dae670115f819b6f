"""Prompts, client shards, client sampling and derived seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from firm.client import prompt_batch, sample_clients
from firm.data import BUILTIN_PROMPTS, Prompt, PromptFileError, load_prompts, split_prompts
from firm.seeding import derive_seed


def test_split_is_disjoint_and_complete() -> None:
    prompts = load_prompts("builtin")
    split = split_prompts(prompts, num_clients=3, num_eval=8, seed=0)
    train = [p for shard in split.clients for p in shard]
    assert len(split.eval) == 8
    assert not set(split.eval) & set(train)  # no client ever trains on a held-out prompt
    assert sorted(p.text for p in [*train, *split.eval]) == sorted(BUILTIN_PROMPTS)
    assert max(len(s) for s in split.clients) - min(len(s) for s in split.clients) <= 1
    assert split_prompts(prompts, 3, 8, seed=0) == split
    assert split_prompts(prompts, 3, 8, seed=1) != split


def test_too_few_prompts() -> None:
    with pytest.raises(ValueError, match="too few"):
        split_prompts([Prompt("a"), Prompt("b")], num_clients=2, num_eval=1, seed=0)


def test_jsonl_prompt_file(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi", "reference": "hello"}\n\n{"prompt": "bye", "site": 3}\n')
    assert load_prompts(str(path)) == [Prompt("hi", "hello"), Prompt("bye")]
    path.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(PromptFileError, match=r"p.jsonl:2: invalid JSON"):
        load_prompts(str(path))
    path.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(PromptFileError, match=r"p.jsonl:1: expected an object"):
        load_prompts(str(path))
    with pytest.raises(PromptFileError, match="not found"):
        load_prompts(str(tmp_path / "missing.jsonl"))


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
    assert derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
