"""The reward-learning run: federated (or centralized, or local) training of the preference predictor.

    run(config) -> Path of the run directory

    <output.dir>/<name>/
        config.toml                 the resolved RewardConfig (`firm reward train --config` loads it back)
        metrics.jsonl               one row per round: samples seen, loss, alignment on seen and unseen groups
        groups.json                 the split: seen groups (train/test sizes) and unseen groups
        checkpoints/round_NNNN/     global.safetensors (the predictor), state.safetensors + state.json
                                    (round, samples, the server optimiser's state; local mode: every group's model)
        model/                      the final predictor (firm.rewards.model_dir), what `learned:<path>` loads
        summary.json, alignment.png, report.md

Round t of `federated` (PluralLLM's protocol, with client sampling and a server optimiser):
1. the server samples `clients_per_round` groups uniformly without replacement, stream (seed, round);
2. each runs `firm.rewards.local.local_update` on its own training items from the global weights;
3. the server steps the global weights on the sample-weighted pseudo-gradient (firm.rewards.server).
`centralized` takes, per round, one epoch-equivalent (`local_epochs` passes) of steps on all seen
groups' items pooled; `local` trains one predictor per group on its own items only, every round.
Every draw is keyed by (seed, purpose, round, client) so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch
from torch import nn

from firm import checkpoint as ckpt
from firm.atomic import replace_dir_atomic, write_atomic
from firm.config import ConfigError
from firm.policy import resolve_device
from firm.rewards.config import RewardConfig, load_reward_config, reward_config_to_dict
from firm.rewards.episodes import GroupData, eval_context
from firm.rewards.local import LocalResult, StepPlan, Weights, evaluate, local_update, train_pooled
from firm.rewards.metrics import fairness
from firm.rewards.model_dir import save_model
from firm.rewards.predictor import PredictorSpec, build_predictor
from firm.rewards.server import ServerOptimizer
from firm.seeding import Stream, derive_seed, numpy_rng
from firm.version import __version__

# sub-streams of Stream.REWARD
INIT, SAMPLING, EPISODES, CONTEXT, POOL = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class RewardData:
    """The groups' items as tensors: `train`/`test` for seen groups (same keys), `unseen` for held-out groups."""

    train: dict[str, GroupData]
    test: dict[str, GroupData]
    unseen: dict[str, GroupData]
    embedding: dict[str, Any]  # {"model": ..., "dim": D}
    attribute: str = ""

    @property
    def dim(self) -> int:
        return int(next(iter(self.train.values())).x.shape[1])


def load_data(config: RewardConfig, device: torch.device) -> RewardData:
    """The configured ratings, split and embedded (embeddings cached on disk)."""
    from firm.rewards.embeddings import EMBEDDING_DIM, EMBEDDING_MODEL, embed_texts
    from firm.rewards.ratings import load_chitchat, split_groups, validation_split

    d = config.data
    try:
        groups = load_chitchat(d.attribute, min_conversations=d.min_conversations, max_chars=d.max_chars, min_turns=d.min_turns)
        split = split_groups(groups, unseen_groups=d.unseen_groups, test_fraction=d.test_fraction, seed=d.seed)
        if d.holdout == "validation":
            split = validation_split(split, fraction=d.test_fraction, seed=d.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    parts = {"train": split.train, "test": split.test, "unseen": split.unseen}
    texts = [item.text for part in parts.values() for name in sorted(part) for item in part[name]]
    vectors = embed_texts(texts, device=device)
    out: dict[str, dict[str, GroupData]] = {}
    row = 0
    for key, part in parts.items():
        out[key] = {}
        for name in sorted(part):
            items = part[name]
            x = vectors[row : row + len(items)]
            row += len(items)
            out[key][name] = GroupData(name, x, torch.tensor([i.level for i in items]), tuple(i.question for i in items))
    return RewardData(out["train"], out["test"], out["unseen"], {"model": EMBEDDING_MODEL, "dim": EMBEDDING_DIM}, d.attribute)


def spec_of(config: RewardConfig, dim: int) -> PredictorSpec:
    m = config.model
    return PredictorSpec(m.kind, dim, 10, m.d_model, m.layers, m.heads, m.hidden, m.dropout)


def plan_of(config: RewardConfig) -> StepPlan:
    t, m = config.train, config.model
    context = m.context if m.kind == "gpo" else 0
    return StepPlan(t.local_epochs, t.episodes_per_step, context, m.queries, t.lr, t.weight_decay)


def sample_groups(names: Sequence[str], k: int, seed: int, round_idx: int) -> list[str]:
    """`k` of the sorted group names, uniformly without replacement, from stream (seed, round); in name order."""
    ordered = sorted(names)
    if k >= len(ordered):
        return ordered
    rng = numpy_rng(Stream.REWARD, seed, SAMPLING, round_idx)
    return sorted(ordered[int(i)] for i in rng.choice(len(ordered), size=k, replace=False))


def contexts_for(data: RewardData, context: int, seed: int) -> tuple[dict[str, GroupData], dict[str, GroupData]]:
    """The fixed evaluation context of every group and the queries it is evaluated on.

    Seen groups: C of their training items as context, all their test items as queries; unseen
    groups: C of their own items as context, the rest as queries. -> (contexts, queries), keyed by group.
    """
    contexts, queries = {}, {}
    for i, name in enumerate(sorted(data.train)):
        idx = eval_context(data.train[name], context, numpy_rng(Stream.REWARD, seed, CONTEXT, i))
        contexts[name], queries[name] = data.train[name].take(idx), data.test[name]
    for i, name in enumerate(sorted(data.unseen)):
        group = data.unseen[name]
        idx = eval_context(group, context, numpy_rng(Stream.REWARD, seed, CONTEXT, 10_000 + i))
        rest = np.setdiff1d(np.arange(len(group)), idx)
        contexts[name], queries[name] = group.take(idx), group.take(rest)
    return contexts, queries


ClientRunner = Callable[[Weights, Sequence[str], int], list[LocalResult]]
"""The engine seam: (global weights, the round's sampled groups, round) -> their local results, in that order."""


def in_process_runner(model: nn.Module, data: RewardData, plan: StepPlan, seed: int, device: torch.device) -> ClientRunner:
    """Clients one after another in this process (the default engine)."""
    index = {name: i for i, name in enumerate(sorted(data.train))}

    def run_clients(weights: Weights, names: Sequence[str], round_idx: int) -> list[LocalResult]:
        return [
            local_update(
                model, weights, data.train[n], plan, numpy_rng(Stream.REWARD, seed, EPISODES, round_idx, index[n]), device
            )
            for n in names
        ]

    return run_clients


def _summarise(per_group: Mapping[str, Mapping[str, float]], names: Sequence[str]) -> dict[str, Any]:
    if not names:
        return {}
    fair = fairness({n: per_group[n]["alignment"] for n in names}).to_dict()
    fair["item_alignment"] = float(np.mean([per_group[n]["item_alignment"] for n in names]))
    fair["mae"] = float(np.mean([per_group[n]["mae"] for n in names]))
    return fair


def _eval_row(
    models: Callable[[str], nn.Module],
    data: RewardData,
    contexts: Mapping[str, GroupData],
    queries: Mapping[str, GroupData],
    device: torch.device,
) -> dict[str, Any]:
    per_group: dict[str, dict[str, float]] = {}
    for name in sorted(queries):
        per_group.update(evaluate(models(name), {name: contexts[name]}, {name: queries[name]}, device))
    seen, unseen = sorted(data.train), sorted(n for n in data.unseen if n in per_group)
    return {"seen": _summarise(per_group, seen), "unseen": _summarise(per_group, unseen), "groups": per_group}


def run(
    config: RewardConfig,
    *,
    data: RewardData | None = None,
    resume: Path | None = None,
    progress: bool = True,
    runner: ClientRunner | None = None,
) -> Path:
    """Train, evaluate every `eval_every` rounds, checkpoint, write the model and the report; returns the run dir.

    `runner` runs a federated round's clients (default `in_process_runner`; the Flower ServerApp passes
    `firm.rewards.flower.FlowerRunner`); everything else, evaluation included, runs here.
    """
    t = config.train
    device = resolve_device(t.device)
    data = data if data is not None else load_data(config, device)
    if not data.train:
        raise ConfigError("reward training needs at least one seen group")
    spec, plan = spec_of(config, data.dim), plan_of(config)
    with torch.random.fork_rng(devices=[]):  # the initialisation from (seed, INIT), not from the global stream
        torch.manual_seed(derive_seed(Stream.REWARD, t.seed, INIT))
        model = build_predictor(spec).to(device)
    init = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    federated = t.mode == "federated"  # the other modes keep their weights in the server object with a plain copy step
    server = ServerOptimizer(
        init,
        t.server if federated else "fedavg",
        lr=t.server_lr if federated else 1.0,
        momentum=t.server_momentum,
        beta2=t.server_beta2,
        tau=t.server_tau,
    )
    local_weights = {name: dict(init) for name in data.train} if t.mode == "local" else {}
    contexts, queries = contexts_for(data, plan.context, config.data.seed)
    if t.mode == "local":  # an unseen group has no model of its own: nothing to evaluate it with
        queries = {name: q for name, q in queries.items() if name in data.train}
    path, start, samples, rows = _open_run_dir(config, data, resume)
    if resume is not None:
        last = ckpt.load(ckpt.latest(path))
        server.set_weights(last.global_adapter)
        server.load_state_dict(last.state["server"])
        samples = int(last.state["samples"])
        local_weights = {k: dict(v) for k, v in last.state.get("local", {}).items()}
    runner = runner if runner is not None else in_process_runner(model, data, plan, t.seed, device)

    def model_for(name: str) -> nn.Module:
        """The model group `name` is evaluated with: its own in local mode; else the global one, loaded once per evaluation."""
        if t.mode == "local":
            model.load_state_dict(local_weights[name])
        return model

    def evaluation() -> dict[str, Any]:
        if t.mode != "local":
            model.load_state_dict(server.weights)
        return _eval_row(model_for, data, contexts, queries, device)

    if start == 0:
        rows.append(_append(path, {"round": 0, "samples": 0, **evaluation()}))
    bar = range(start + 1, t.rounds + 1)
    for round_idx in bar:
        began = time.perf_counter()
        if t.mode == "federated":
            names = sample_groups(list(data.train), t.clients_per_round, t.seed, round_idx)
            results = runner(server.weights, names, round_idx)
            delta = server.step([(r.weights, r.samples) for r in results])
        elif t.mode == "centralized":
            names = sorted(data.train)
            model.load_state_dict(server.weights)
            # episodes from the stream of client 0 of a federated round: with one group the two runs coincide
            pool = [data.train[n] for n in names]
            picks, episodes = (
                numpy_rng(Stream.REWARD, t.seed, POOL, round_idx),
                numpy_rng(Stream.REWARD, t.seed, EPISODES, round_idx, 0),
            )
            results = [train_pooled(model, pool, plan, picks, episodes, device)]
            delta = server.step([(results[0].weights, 1.0)])
        else:
            names = sorted(data.train)
            results = []  # nothing is shared: every group steps its own model
            for i, n in enumerate(names):
                rng = numpy_rng(Stream.REWARD, t.seed, EPISODES, round_idx, i)
                results.append(local_update(model, local_weights[n], data.train[n], plan, rng, device))
                local_weights[n] = results[-1].weights
            delta = 0.0
        samples += sum(r.trained for r in results)
        row: dict[str, Any] = {
            "round": round_idx,
            "clients": list(names),
            "samples": samples,
            "loss": float(np.mean([r.loss for r in results])),
            "delta_norm": delta,
        }
        if round_idx % t.eval_every == 0 or round_idx == t.rounds:
            row.update(evaluation())
        row["seconds"] = round(time.perf_counter() - began, 3)
        rows.append(_append(path, row))
        if progress:
            seen = row.get("seen", {})
            shown = f" seen alignment {seen['mean']:.4f} (worst {seen['worst']:.4f})" if seen else ""
            print(f"reward round {round_idx}/{t.rounds}: loss {row['loss']:.4f}{shown} [{row['seconds']:.1f} s]", file=sys.stderr)
        if t.checkpoint_every and (round_idx % t.checkpoint_every == 0 or round_idx == t.rounds):
            saved: dict[str, Any] = {
                "round": round_idx,
                "samples": samples,
                "server": server.state_dict(),
                "local": local_weights,
                "seed": t.seed,
            }
            replace_dir_atomic(
                path / "checkpoints" / f"round_{round_idx:04d}", functools.partial(_fill_checkpoint, server=server, state=saved)
            )
    model.load_state_dict(server.weights)
    meta = {
        "embedding": data.embedding,
        "attribute": data.attribute,
        "levels": spec.levels,
        "context": plan.context,
        "default_group": "",
        "mode": t.mode,
        "firm": __version__,
    }
    save_model(path / "model", model, spec, contexts, meta)
    from firm.rewards.report import write_report

    write_report(path, config, rows)
    return path


def _fill_checkpoint(directory: Path, *, server: ServerOptimizer, state: dict[str, Any]) -> None:
    ckpt.write_state(directory, server.weights, state)


def _append(path: Path, row: dict[str, Any]) -> dict[str, Any]:
    with (path / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    return row


def _open_run_dir(config: RewardConfig, data: RewardData, resume: Path | None) -> tuple[Path, int, int, list[dict[str, Any]]]:
    """A new run directory, or the resumed one with metrics cut back to its latest checkpoint's round."""
    if resume is not None:
        last = ckpt.load(ckpt.latest(resume))
        rows = [json.loads(line) for line in (resume / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [r for r in rows if r["round"] <= last.round]
        write_atomic(resume / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return resume, last.round, int(last.state["samples"]), rows
    out = config.output
    name = out.name or f"reward-{config.train.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(out.dir) / name
    if path.exists() and any(path.iterdir()):
        raise ConfigError(f"run directory {path} already exists and is not empty; choose another output.name")
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(
        path / "config.toml", f"# resolved reward config, firm {__version__}\n" + tomli_w.dumps(reward_config_to_dict(config))
    )
    split = {
        "seen": {n: {"train": len(data.train[n]), "test": len(data.test[n])} for n in sorted(data.train)},
        "unseen": {n: len(g) for n, g in sorted(data.unseen.items())},
    }
    write_atomic(path / "groups.json", json.dumps(split, indent=2) + "\n")
    return path, 0, 0, []


def resume_run(run_dir: Path, *, data: RewardData | None = None, progress: bool = True) -> Path:
    """Continue a run from its latest checkpoint with its own config.toml."""
    config = load_reward_config(run_dir / "config.toml")
    return run(config, data=data, resume=run_dir, progress=progress)
