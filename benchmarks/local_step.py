"""Benchmark: FIRM's local step time vs FedAvg's, on the same rollouts, at M = 2 and M = 4.

Both algorithms run K local steps from the same adapter with the same rollout seeds (the first
rollout is identical token for token; later ones differ only through the parameters), same
B, G, K. Repetitions are interleaved (FIRM, FedAvg, FIRM, ...) so machine noise hits both alike.
Prints the ratio FIRM / FedAvg of the median time per local step, the absolute times for context,
and the share of each phase. FIRM runs with the default `vjp = loop` (M backward passes of one graph)
and is also timed with `vjp = batched` (one vmapped backward).

    python benchmarks/local_step.py [--model tiny] [--reps 10] [--steps 2] [--prompts 4] [--samples 4] [--tokens 24]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from firm.client import problem_sampler
from firm.config import load_config
from firm.data import load_prompts
from firm.local_step import Timer, local_update
from firm.objectives import REGISTRY
from firm.policy import build_policy
from firm.solvers import firm_weights


def questions(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """A fourth cheap objective for M = 4: asks a question back (1) or not (0)."""
    return [1.0 if "?" in c else 0.0 for c in completions]


def time_algorithm(
    policy: Any, config: Any, objectives: Any, shard: Any, kind: str, seed_round: int
) -> tuple[float, dict[str, float]]:
    """One client's K local steps; returns (seconds per local step, phase totals)."""
    import time

    m = len(objectives)
    anchor = torch.full((m,), 1.0 / m, dtype=torch.float64)
    timer = Timer(policy.device)
    sampler = problem_sampler(policy, objectives, shard, config, seed_round, 0, timer)
    if kind == "fedavg":
        weighting: Any = anchor
    else:
        weighting = lambda gram: firm_weights(gram, anchor, config.algorithm.reg)  # noqa: E731
    start = time.perf_counter()
    local_update(policy.params, sampler, weighting, config.algorithm.local_steps, 1, "adam", 1e-3, timer)
    return (time.perf_counter() - start) / config.algorithm.local_steps, timer.totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="K local steps per measurement")
    parser.add_argument("--prompts", type=int, default=4, help="B")
    parser.add_argument("--samples", type=int, default=4, help="G")
    parser.add_argument("--tokens", type=int, default=24, help="max new tokens")
    args = parser.parse_args()

    REGISTRY.setdefault("questions", questions)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"model {args.model}, B={args.prompts}, G={args.samples}, K={args.steps}, max_new_tokens={args.tokens}, reps={args.reps}\n"
    )
    shard = load_prompts("builtin")
    policy = None
    for names in (["positiveness", "conciseness"], ["positiveness", "conciseness", "diversity", "questions"]):
        overrides = [
            f"model.name={args.model}",
            f"objectives.names={names!r}".replace("'", '"'),
            f"rollout.prompts_per_step={args.prompts}",
            f"rollout.samples_per_prompt={args.samples}",
            f"rollout.max_new_tokens={args.tokens}",
            f"algorithm.local_steps={args.steps}",
        ]
        config = load_config(None, overrides)
        if policy is None:
            policy = build_policy(config.model, config.lora, seed=0)
        objectives = [(n, REGISTRY[n]) for n in names]
        start_adapter = policy.get_adapter()
        batched_config = load_config(None, [*overrides, "algorithm.vjp=batched"])
        times: dict[str, list[float]] = {"firm": [], "fedavg": [], "firm (vjp=batched)": []}
        phases: dict[str, dict[str, float]] = {k: {} for k in times}
        # One untimed warm-up of each, then interleaved repetitions on the same seeds.
        for rep in range(args.reps + 1):
            for kind, cfg in (("firm", config), ("fedavg", config), ("firm (vjp=batched)", batched_config)):
                policy.set_adapter(start_adapter)
                seconds, totals = time_algorithm(policy, cfg, objectives, shard, kind.split()[0], seed_round=rep)
                if rep == 0:
                    continue
                times[kind].append(seconds)
                for phase, t in totals.items():
                    phases[kind][phase] = phases[kind].get(phase, 0.0) + t
        policy.set_adapter(start_adapter)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"M = {len(names)} objectives: {', '.join(names)}")
        print(f"  ratio FIRM / FedAvg local step time: {med['firm'] / med['fedavg']:.3f}")
        print(f"  ratio FIRM (vjp=batched) / FedAvg:   {med['firm (vjp=batched)'] / med['fedavg']:.3f}")
        for kind, t in med.items():
            total = sum(phases[kind].values())
            shares = ", ".join(f"{p} {100 * v / total:.0f}%" for p, v in sorted(phases[kind].items(), key=lambda kv: -kv[1]))
            print(f"  {kind:20s} {1000 * t:8.1f} ms/step   {shares}")
        grad_part = {
            k: (phases[k].get("forward", 0) + phases[k].get("backward", 0) + phases[k].get("solve", 0))
            for k in ("firm", "fedavg")
        }
        print(
            f"  gradient part only (forward + backward + solve), FIRM / FedAvg: {grad_part['firm'] / grad_part['fedavg']:.3f}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
