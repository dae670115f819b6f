"""Non-federated references (docs/design.md section 5): what pooling the data, or not cooperating, would give.

- `centralized`: ONE learner on the pooled training prompts of all clients (the held-out set is
  the same as in the federated run). Per round it takes clients_per_round x K local steps, so it
  sees the same number of samples per round as the federation, with the weighting rule
  `algorithm.reference_rule` (firm, fedavg or mgda). Nothing is communicated: comm bytes are 0.
  Run directory: an ordinary one.
- `local`: every client trains ALONE on its own shard, from the same initial adapter, for the
  configured rounds x K local steps, with the same rule; no communication. Each client gets an
  ordinary run directory `<run>/client_NN/`; the parent holds `metrics.jsonl` with, per round, the
  mean and the spread (std, min, max) over clients of every eval reward and the KL, and a
  `summary.json` with the same for the final figures.

Both use exactly the config's partition (`split_prompts`: the config's data seed), so they are
comparable with a federated run of the same config.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from typing import Any

from firm.config import Config
from firm.data import FederatedPrompts, split_prompts
from firm.rundir import RunDir, run_name, write_atomic
from firm.train import RunResult, run
from firm.validation import validate
from firm.version import __version__


def _single_learner(config: Config, local_steps: int, output_dir: str, output_name: str) -> Config:
    return dataclasses.replace(
        config,
        algorithm=dataclasses.replace(config.algorithm, name=config.algorithm.reference_rule, local_steps=local_steps),
        # One learner: nothing to screen or outvote, and min_clients of the federation does not apply to it.
        federation=dataclasses.replace(config.federation, num_clients=1, clients_per_round=1, min_clients=0),
        aggregation=dataclasses.replace(config.aggregation, max_norm_ratio=0.0),
        data=dataclasses.replace(config.data, provocative_ratios=()),  # the partition is given, not re-made
        output=dataclasses.replace(config.output, dir=output_dir, name=output_name),
    )


def run_centralized(config: Config) -> RunResult:
    """One learner on all clients' training prompts, clients_per_round x K steps per round, no communication."""
    validate(config)
    fed = config.federation
    split = split_prompts(config)
    pooled = FederatedPrompts(clients=(tuple(p for shard in split.clients for p in shard),), eval=split.eval)
    name = run_name(config, "centralized")
    single = _single_learner(config, config.algorithm.local_steps * fed.clients_per_round, config.output.dir, name)
    result = run(single, prompts=pooled, communicate=False)
    result.summary.update(reference="centralized", reference_rule=config.algorithm.reference_rule)
    write_atomic(result.run_dir / "summary.json", json.dumps(result.summary, indent=2) + "\n")
    return result


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def run_local(config: Config) -> RunResult:
    """Every client alone on its own shard; returns the parent directory and the mean/spread over clients."""
    validate(config)
    fed = config.federation
    split = split_prompts(config)
    name = run_name(config, "local")
    parent = RunDir(dataclasses.replace(config, output=dataclasses.replace(config.output, name=name)), __version__)
    clients: list[RunResult] = []
    for c, shard in enumerate(split.clients):
        single = _single_learner(config, config.algorithm.local_steps, str(parent.path), f"client_{c:02d}")
        clients.append(
            run(single, prompts=FederatedPrompts(clients=(shard,), eval=split.eval), communicate=False, reuse_model=True)
        )
    names = list(config.objectives.names)
    metrics: list[dict[str, Any]] = []
    for r in range(fed.rounds):
        rows = [c.metrics[r] for c in clients]
        evaluated = [row for row in rows if row["eval"] is not None]
        metrics.append(
            {
                "round": r + 1,
                "clients": list(range(len(clients))),
                "eval": {n: _spread([row["eval"][n] for row in evaluated]) for n in names} if evaluated else None,
                "kl": _spread([row["kl"] for row in evaluated]) if evaluated else None,
                "comm": {"upload_bytes": 0, "download_bytes": 0},
            }
        )
        parent.append_metrics(metrics[-1])
    final_eval = {n: _spread([c.summary["final_eval"][n] for c in clients]) for n in names}
    summary: dict[str, Any] = {
        "firm_version": __version__,
        "algorithm": "local",
        "reference": "local",
        "reference_rule": config.algorithm.reference_rule,
        "objectives": names,
        "compute_dtype": clients[0].summary.get("compute_dtype"),
        "status": "completed",
        "rounds": fed.rounds,
        "clients": [str(c.run_dir.relative_to(parent.path)) for c in clients],
        "final_eval": final_eval,
        "final_kl": _spread([c.summary["final_kl"] for c in clients]),
        "total_upload_bytes": 0,
        "total_download_bytes": 0,
    }
    parent.write_summary(summary)
    final = {n: final_eval[n]["mean"] for n in names}
    return RunResult(run_dir=parent.path, final_adapter={}, metrics=metrics, summary={**summary, "final_eval_mean": final})


REFERENCE_RUNS: dict[str, Callable[[Config], RunResult]] = {"centralized": run_centralized, "local": run_local}
"""`algorithm.name` -> its runner, for the names in `firm.config.REFERENCES` (dispatched by firm.launch)."""
