"""Held-out evaluation statistics: standard errors with prompts as the unit, paired (common random
number) sampling across adapters, and the paired standard error of base -> final in the report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import firm.evaluation
from firm.data import Prompt
from firm.evaluation import EVAL_CHUNK, evaluate, prompt_stderr
from firm.objectives import resolve_objective
from firm.report.run import report_table
from firm.train import run
from tests.conftest import tiny_config


def test_prompt_stderr_by_hand() -> None:
    # column 0: prompt means 1, 3, 2 -> mean 2, sd sqrt(((-1)^2 + 1^2 + 0^2) / 2) = 1, se 1 / sqrt(3)
    # column 1: 0, 0, 3 -> mean 1, sd sqrt((1 + 1 + 4) / 2) = sqrt(3), se sqrt(3) / sqrt(3) = 1
    se = prompt_stderr(torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]], dtype=torch.float64))
    assert se[0] == pytest.approx(1 / math.sqrt(3), rel=1e-12)
    assert se[1] == pytest.approx(1.0, rel=1e-12)
    assert prompt_stderr(torch.tensor([[0.5, 0.5]], dtype=torch.float64)) == [None, None]


def test_evaluate_takes_the_prompt_as_the_unit(tiny_policy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rewards chosen per sequence: prompt j's G = 2 completions score (j, 0) and (j + 1, 10), so
    the prompt means are j + 0.5 and 5, the means over P = 3 prompts 1.5 and 5, and the standard
    errors sd(0.5, 1.5, 2.5) / sqrt(3) = 1 / sqrt(3) and 0."""

    def fake_score(objectives: Any, prompts: list[str], completions: list[str], **kw: Any) -> torch.Tensor:
        group = kw["group"]
        offset = int(prompts[0].split()[-1])  # the chunk's first prompt number
        rows = [[float(offset + g + (i % 2)), 10.0 * (i % 2)] for i, g in enumerate(group)]
        return torch.tensor(rows)

    monkeypatch.setattr(firm.evaluation, "score", fake_score)
    prompts = [Prompt(f"hello number {j}") for j in range(3)]
    result = evaluate(tiny_policy, [("a", None), ("b", None)], prompts, 2, 3, 1.0, seed=0)  # type: ignore[list-item]
    assert result.prompt_means == [[0.5, 5.0], [1.5, 5.0], [2.5, 5.0]]
    assert result.means == pytest.approx({"a": 1.5, "b": 5.0})
    assert result.stderr["a"] == pytest.approx(1 / math.sqrt(3))
    assert result.stderr["b"] == pytest.approx(0.0)


def test_every_chunk_draws_from_its_own_seed_whatever_the_adapter(tiny_policy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Common random numbers: chunk c is sampled from (Stream.EVAL, seed, 0, c), not from a generator
    that earlier chunks advanced by an adapter-dependent number of draws."""
    seen: list[int] = []
    real_sample = firm.evaluation.sample

    def recording(policy: Any, texts: Any, g: int, t: int, temp: float, generator: torch.Generator, **kw: Any) -> Any:
        seen.append(generator.initial_seed())
        return real_sample(policy, texts, g, t, temp, generator, **kw)

    monkeypatch.setattr(firm.evaluation, "sample", recording)
    objectives = [("positiveness", resolve_objective("positiveness"))]
    prompts = [Prompt(f"hello there {j}") for j in range(2 * EVAL_CHUNK + 1)]
    start = tiny_policy.get_adapter()
    try:
        first = evaluate(tiny_policy, objectives, prompts, 2, 4, 1.0, seed=3)
        with torch.no_grad():
            for p in tiny_policy.params.values():
                p.add_(0.3 * torch.randn_like(p))
        second = evaluate(tiny_policy, objectives, prompts, 2, 4, 1.0, seed=3)
    finally:
        tiny_policy.set_adapter(start)
    assert len(seen) == 6 and seen[:3] == seen[3:] and len(set(seen[:3])) == 3
    assert len(first.prompt_means) == len(second.prompt_means) == len(prompts)


def test_the_run_records_standard_errors_and_the_table_prints_the_paired_one(tmp_path: Path) -> None:
    result = run(tiny_config(tmp_path, "federation.rounds=1", "eval.num_prompts=6"))
    summary = json.loads((result.run_dir / "summary.json").read_text(encoding="utf-8"))
    row = json.loads((result.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[0])
    names = summary["objectives"]
    assert set(row["eval_se"]) == set(names) and len(row["eval_prompt_means"]) == 6
    assert summary["final_eval_se"] == row["eval_se"]
    base = np.array(summary["initial_eval_prompt_means"])
    final = np.array(summary["final_eval_prompt_means"])
    assert np.allclose(base.mean(axis=0), [summary["initial_eval"][n] for n in names])
    assert np.allclose(base.std(axis=0, ddof=1) / np.sqrt(6), [summary["initial_eval_se"][n] for n in names])
    paired = (final - base).std(axis=0, ddof=1) / np.sqrt(6)
    table = report_table(result.run_dir)
    for name, se in zip(names, paired, strict=True):
        line = next(line for line in table.splitlines() if line.startswith(name))
        assert line.split()[-1] == f"{se:.4f}", (line, se)
    assert "paired over the 6 held-out prompts" in table
