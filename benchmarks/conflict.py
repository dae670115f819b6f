"""Do two objectives conflict? Within-prompt correlations on the base model's own replies, with bootstrap intervals.

Samples G replies of the base model (adapter disabled: no training) to N prompts of each prompt
set, scores every reply with every objective, and prints for each set the correlation matrix of
the rewards:

- within prompt (each reward minus its prompt's mean over the G replies): what group-relative
  advantages see. A negative within-prompt correlation means that among one prompt's replies,
  those that score higher on one objective score lower on the other: a trade-off the policy
  gradient cannot avoid;
- pooled (the raw rewards), for contrast: prompt-level effects (an easy prompt raises both)
  dominate it.

Intervals: percentile bootstrap over prompts (prompts drawn with replacement, each keeping its G
replies, the correlation recomputed on each resample; `--bootstrap` resamples), because the
replies of one prompt are not independent. Sample replies at both ends of the first pair's
trade-off are printed (highest a - b and highest b - a, in within-prompt standard units).

    python benchmarks/conflict.py [--config compliance-vs-harm] [--objectives a,b,...]
        [--sets task,provocative,chatterbot] [--prompts 32] [--samples 4] [--tokens T] [--json out.json]

`--config` takes a config file or a packaged task name (`firm tasks` lists them); the model,
objectives, max_new_tokens and temperature come from it unless given here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

from firm.config import Config, read_config
from firm.data import Prompt, load_prompts, load_sources
from firm.objectives import resolve_objective, score
from firm.policy import Policy, build_policy
from firm.rollout import sample
from firm.seeding import Stream, numpy_rng, torch_generator
from firm.tasks import resolve_config_path

CHUNK = 8  # prompts per sampling batch


def replies_and_rewards(
    policy: Policy, names: list[str], prompts: list[Prompt], samples: int, tokens: int, temperature: float, seed: int
) -> tuple[np.ndarray, list[str]]:
    """[N, G, M] rewards of G base-model replies per prompt, and the N * G replies (prompt-major)."""
    objectives = [(n, resolve_objective(n)) for n in names]
    rewards, texts = [], []
    for chunk_idx, start in enumerate(range(0, len(prompts), CHUNK)):
        chunk = prompts[start : start + CHUNK]
        generator = torch_generator(policy.device, Stream.BENCHMARK, seed, 0, chunk_idx)
        with policy.reference():
            rollout = sample(policy, [p.text for p in chunk], samples, tokens, temperature, generator)
        r = score(objectives, [chunk[g].text for g in rollout.group], rollout.completions, device=policy.device,
                  completion_ids=rollout.completion_ids, group=rollout.group,
                  reference=[chunk[g].reference for g in rollout.group])  # fmt: skip
        rewards.append(r.double().numpy().reshape(len(chunk), samples, len(names)))
        texts.extend(rollout.completions)
    return np.concatenate(rewards), texts


def _corr(x: np.ndarray) -> np.ndarray:
    """[n, M] -> [M, M] Pearson correlation (NaN where a column is constant)."""
    x = x - x.mean(axis=0)
    norm = np.sqrt((x * x).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x.T @ x) / np.outer(norm, norm)


def within_prompt(rewards: np.ndarray) -> np.ndarray:
    """[N, G, M] -> [N * G, M] rewards minus their prompt's mean."""
    return (rewards - rewards.mean(axis=1, keepdims=True)).reshape(-1, rewards.shape[-1])


def correlation_intervals(
    rewards: np.ndarray, resamples: int, rng: np.random.Generator, level: float = 0.95
) -> dict[str, np.ndarray]:
    """Within-prompt and pooled correlation matrices with percentile-bootstrap intervals over prompts.

    Returns {"within", "within_low", "within_high", "pooled", "pooled_low", "pooled_high"}, each [M, M].
    """
    n = rewards.shape[0]
    draws_w, draws_p = [], []
    for _ in range(resamples):
        pick = rng.integers(0, n, size=n)
        draws_w.append(_corr(within_prompt(rewards[pick])))
        draws_p.append(_corr(rewards[pick].reshape(-1, rewards.shape[-1])))
    tail = 100 * (1 - level) / 2
    out: dict[str, np.ndarray] = {
        "within": _corr(within_prompt(rewards)),
        "pooled": _corr(rewards.reshape(-1, rewards.shape[-1])),
    }
    for key, draws in (("within", draws_w), ("pooled", draws_p)):
        stack = np.stack(draws)
        out[f"{key}_low"] = np.nanpercentile(stack, tail, axis=0)
        out[f"{key}_high"] = np.nanpercentile(stack, 100 - tail, axis=0)
    return out


def extremes(rewards: np.ndarray, texts: list[str], a: int, b: int, count: int) -> list[dict[str, Any]]:
    """The `count` replies with the largest z_a - z_b and the `count` with the largest z_b - z_a (within-prompt z)."""
    w = within_prompt(rewards)
    z = w / np.maximum(w.std(axis=0), 1e-12)
    gap = z[:, a] - z[:, b]
    order = np.argsort(gap)
    rows = []
    for idx in [*order[::-1][:count], *order[:count]]:
        rows.append(
            {"reply": texts[idx], "rewards": rewards.reshape(-1, rewards.shape[-1])[idx].tolist(), "gap": float(gap[idx])}
        )
    return rows


def _task_config(args: argparse.Namespace) -> Config:
    path = resolve_config_path(args.config) if args.config else None
    return read_config(path, args.overrides)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", help="config file or packaged task name (default: the built-in defaults)")
    parser.add_argument("--objectives", help="comma-separated objectives (default: the config's)")
    parser.add_argument(
        "--sets", default="task", help="comma-separated prompt sources; `task` = the config's data.sources pooled (default)"
    )
    parser.add_argument("--prompts", type=int, default=32, help="prompts per set")
    parser.add_argument("--samples", type=int, default=4, help="replies per prompt (G)")
    parser.add_argument("--tokens", type=int, default=0, help="max new tokens per reply (default: the config's)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over prompts")
    parser.add_argument("--examples", type=int, default=2, help="sample replies printed at each end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the matrices and examples here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args()

    config = _task_config(args)
    names = [n.strip() for n in args.objectives.split(",")] if args.objectives else list(config.objectives.names)
    tokens = args.tokens or config.rollout.max_new_tokens
    start = time.perf_counter()
    policy = build_policy(config.model, config.lora, seed=args.seed)
    print(f"model {config.model.name} ({policy.precision.name}), objectives {', '.join(names)}")
    print(
        f"{args.prompts} prompts x {args.samples} replies per set, {tokens} new tokens, temperature {config.rollout.temperature}"
    )
    print(f"intervals: 95 % percentile bootstrap over prompts ({args.bootstrap} resamples)\n")
    report: dict[str, Any] = {"model": config.model.name, "objectives": names, "tokens": tokens, "samples": args.samples,
                              "prompts": args.prompts, "seed": args.seed, "sets": {}}  # fmt: skip
    for set_name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        pool = load_sources(config.data.sources) if set_name == "task" else load_prompts(set_name)
        rng = numpy_rng(Stream.BENCHMARK, args.seed, 1)
        chosen = [pool[int(i)] for i in rng.choice(len(pool), size=min(args.prompts, len(pool)), replace=False)]
        rewards, texts = replies_and_rewards(policy, names, chosen, args.samples, tokens, config.rollout.temperature, args.seed)
        stats = correlation_intervals(rewards, args.bootstrap, numpy_rng(Stream.BENCHMARK, args.seed, 2))
        print(
            f"{set_name} ({len(chosen)} prompts): means "
            + ", ".join(f"{n} {rewards[..., m].mean():.3f}" for m, n in enumerate(names))
        )
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                print(
                    f"  {names[i]} vs {names[j]}: within-prompt r = {stats['within'][i, j]:+.3f} "
                    f"[{stats['within_low'][i, j]:+.3f}, {stats['within_high'][i, j]:+.3f}], "
                    f"pooled r = {stats['pooled'][i, j]:+.3f} [{stats['pooled_low'][i, j]:+.3f}, {stats['pooled_high'][i, j]:+.3f}]"
                )
        ends = extremes(rewards, texts, 0, 1, args.examples) if len(names) >= 2 else []
        for row in ends:
            shown = ", ".join(f"{n} {v:.2f}" for n, v in zip(names, row["rewards"], strict=True))
            print(f"    ({shown}) {row['reply'][:160]!r}")
        report["sets"][set_name] = {
            "means": {n: float(rewards[..., m].mean()) for m, n in enumerate(names)},
            **{k: v.tolist() for k, v in stats.items()},
            "examples": ends,
        }
        print()
    wall = time.perf_counter() - start
    report["wall_time_s"] = wall
    print(f"wall time {wall:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
