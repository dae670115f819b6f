"""Benchmark: FIRM's local step time vs FedAvg's at M = 2, 3, 4, and the fast paths vs the plain ones.

Every variant runs K local steps from the same adapter with the same rollout seeds (the first
rollout is identical token for token; later ones differ only through the parameters), same B, G,
K. Repetitions are interleaved (FIRM, FedAvg, FIRM, ...) so machine noise hits all alike. Prints
the ratio FIRM / FedAvg of the median time per local step (the price of the weighting), the
absolute times for context, and the share of each phase.

Variants: `fedavg` and `firm` on the fast paths (rollout.sampler = fast, algorithm.logprobs = fast)
with vjp = loop, `firm (vjp=batched)`, and at M = 2 also `firm (plain)`: every plain reference
path (rollout.sampler = plain, algorithm.logprobs = plain, vjp = loop), so the speed-up of the fast
paths is measured in the same run.

    python benchmarks/local_step.py [--model smollm2-135m] [--reps 3] [--steps 1] [--prompts 4] [--samples 4] [--tokens 32]
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
from firm.data import load_prompts
from firm.local_step import Timer, local_update
from firm.objectives import REGISTRY
from firm.policy import build_policy
from firm.solvers import firm_weights
from firm.validation import load_config


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
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="K local steps per measurement")
    parser.add_argument("--prompts", type=int, default=4, help="B")
    parser.add_argument("--samples", type=int, default=4, help="G")
    parser.add_argument("--tokens", type=int, default=32, help="max new tokens")
    parser.add_argument("--objectives", type=int, nargs="+", default=[2, 3, 4], help="the values of M")
    args = parser.parse_args()

    REGISTRY.setdefault("questions", questions)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"model {args.model}, B={args.prompts}, G={args.samples}, K={args.steps}, max_new_tokens={args.tokens}, reps={args.reps}\n"
    )
    shard = load_prompts("builtin")
    policy: Any = None
    all_names = ["positiveness", "conciseness", "diversity", "questions"]
    for m in args.objectives:
        names = all_names[:m]
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
            with torch.no_grad():  # a non-trivial adapter, as after some training (B = 0 at init)
                gen = torch.Generator().manual_seed(0)
                for p in policy.params.values():
                    p.add_(0.01 * torch.randn(p.shape, generator=gen))
        objectives = [(n, REGISTRY[n]) for n in names]
        start_adapter = policy.get_adapter()
        variants: dict[str, tuple[str, Any]] = {
            "firm": ("firm", config),
            "fedavg": ("fedavg", config),
            "firm (vjp=batched)": ("firm", load_config(None, [*overrides, "algorithm.vjp=batched"])),
        }
        if m == 2:
            plain = ["rollout.sampler=plain", "algorithm.logprobs=plain", "algorithm.vjp=loop"]
            variants["firm (plain)"] = ("firm", load_config(None, [*overrides, *plain]))
            variants["fedavg (plain)"] = ("fedavg", load_config(None, [*overrides, *plain]))
        times: dict[str, list[float]] = {k: [] for k in variants}
        phases: dict[str, dict[str, float]] = {k: {} for k in variants}
        # One untimed warm-up of each, then interleaved repetitions on the same seeds.
        for rep in range(args.reps + 1):
            for label, (kind, cfg) in variants.items():
                policy.set_adapter(start_adapter)
                seconds, totals = time_algorithm(policy, cfg, objectives, shard, kind, seed_round=rep)
                if rep == 0:
                    continue
                times[label].append(seconds)
                for phase, t in totals.items():
                    phases[label][phase] = phases[label].get(phase, 0.0) + t
        policy.set_adapter(start_adapter)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"M = {m} objectives: {', '.join(names)}")
        print(f"  ratio FIRM / FedAvg local step time: {med['firm'] / med['fedavg']:.3f}")
        print(f"  ratio FIRM (vjp=batched) / FedAvg:   {med['firm (vjp=batched)'] / med['fedavg']:.3f}")
        if m == 2:
            print(f"  speed-up of the fast paths, FIRM plain / FIRM fast:     {med['firm (plain)'] / med['firm']:.2f}x")
            print(f"  speed-up of the fast paths, FedAvg plain / FedAvg fast: {med['fedavg (plain)'] / med['fedavg']:.2f}x")
        for kind, t in med.items():
            total = sum(phases[kind].values())
            shares = ", ".join(f"{p} {100 * v / total:.0f}%" for p, v in sorted(phases[kind].items(), key=lambda kv: -kv[1]))
            print(f"  {kind:20s} {1000 * t:8.1f} ms/step   {shares}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
