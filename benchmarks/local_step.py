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

Compute dtypes (`--dtypes`, default `float32,bfloat16`, or either alone): one policy per
`model.compute_dtype`, built with `build_policy(replace(config.model, compute_dtype=...))`, the
bfloat16 one holding the float32 one's perturbed adapter (`set_adapter`), so both start from the
same adapter; every variant above runs in each dtype, all interleaved in the same repetitions
(firm fp32, firm bf16, fedavg fp32, fedavg bf16, ...). The float32 lines are printed as before
(the same labels, so old figures stay comparable); the bfloat16 ones carry a `bf16` prefix or
suffix: the per-dtype ratio FIRM / FedAvg, and across dtypes the bf16 speed-up of the local step,
`FIRM fast fp32 / FIRM fast bf16` and `FedAvg fast fp32 / FedAvg fast bf16` (target >= 2x on
hardware with native bfloat16; where the CPU has none, bfloat16 runs emulated and is expected to
be several times slower, a figure below 1, printed as measured). The first lines name the CPU's
native-bfloat16 features (`firm.precision.cpu_bf16_features()`, or `none (emulated)`) and the
dtype each policy resolved to, with the reason.

    python benchmarks/local_step.py [--model smollm2-135m] [--reps 3] [--steps 1] [--prompts 4] [--samples 4] [--tokens 32]
                                    [--objectives 2 3 4] [--dtypes float32,bfloat16]
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
from bench_dtypes import DTYPES, SHORT, build_policies, parse_dtypes

from firm.client import problem_sampler
from firm.data import load_prompts
from firm.local_step import Timer, local_update
from firm.objectives import REGISTRY
from firm.policy import Policy
from firm.precision import cpu_bf16_features
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
    parser.add_argument(
        "--dtypes", type=parse_dtypes, default=list(DTYPES), help="compute dtypes, comma-separated (default float32,bfloat16)"
    )
    args = parser.parse_args()
    dtypes: list[str] = args.dtypes

    REGISTRY.setdefault("questions", questions)
    features = cpu_bf16_features()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"CPU: {torch.cpu.get_capabilities().get('cpu_name', '?')}, native bfloat16: {', '.join(features) or 'none (emulated)'}"
    )
    print(
        f"model {args.model}, B={args.prompts}, G={args.samples}, K={args.steps}, max_new_tokens={args.tokens}, reps={args.reps}, "
        f"dtypes {','.join(dtypes)}"
    )
    shard = load_prompts("builtin")
    policies: dict[str, Policy] = {}
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
        if not policies:
            policies = build_policies(load_config(None, overrides), dtypes)
            print()
        objectives = [(n, REGISTRY[n]) for n in names]
        start_adapter = next(iter(policies.values())).get_adapter()  # the same float32 adapter in every dtype
        base_variants: dict[str, tuple[str, list[str]]] = {
            "firm": ("firm", []),
            "fedavg": ("fedavg", []),
            "firm (vjp=batched)": ("firm", ["algorithm.vjp=batched"]),
        }
        if m == 2:
            plain = ["rollout.sampler=plain", "algorithm.logprobs=plain", "algorithm.vjp=loop"]
            base_variants["firm (plain)"] = ("firm", plain)
            base_variants["fedavg (plain)"] = ("fedavg", plain)
        # (label, dtype) -> (kind, config); float32 labels as before, bfloat16 ones suffixed " bf16".
        variants: dict[tuple[str, str], tuple[str, Any]] = {}
        for label, (kind, extra) in base_variants.items():
            for dtype in dtypes:
                cfg = load_config(None, [*overrides, f"model.compute_dtype={dtype}", *extra])
                variants[(label, dtype)] = (kind, cfg)
        times: dict[tuple[str, str], list[float]] = {k: [] for k in variants}
        phases: dict[tuple[str, str], dict[str, float]] = {k: {} for k in variants}
        # One untimed warm-up of each, then interleaved repetitions on the same seeds.
        for rep in range(args.reps + 1):
            for (label, dtype), (kind, cfg) in variants.items():
                policy = policies[dtype]
                policy.set_adapter(start_adapter)
                seconds, totals = time_algorithm(policy, cfg, objectives, shard, kind, seed_round=rep)
                if rep == 0:
                    continue
                times[(label, dtype)].append(seconds)
                for phase, t in totals.items():
                    phases[(label, dtype)][phase] = phases[(label, dtype)].get(phase, 0.0) + t
        for policy in policies.values():
            policy.set_adapter(start_adapter)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"M = {m} objectives: {', '.join(names)}")
        for dtype in dtypes:
            d = {label: med[(label, dt)] for label, dt in med if dt == dtype}
            pre = "" if dtype == "float32" else f"{SHORT[dtype]} "
            print(f"  {pre}ratio FIRM / FedAvg local step time: {d['firm'] / d['fedavg']:.3f}")
            print(f"  {pre}ratio FIRM (vjp=batched) / FedAvg:   {d['firm (vjp=batched)'] / d['fedavg']:.3f}")
            if m == 2:
                print(f"  {pre}speed-up of the fast paths, FIRM plain / FIRM fast:     {d['firm (plain)'] / d['firm']:.2f}x")
                print(f"  {pre}speed-up of the fast paths, FedAvg plain / FedAvg fast: {d['fedavg (plain)'] / d['fedavg']:.2f}x")
        if "float32" in dtypes and "bfloat16" in dtypes:
            emulated = "emulated" in policies["bfloat16"].precision.reason
            note = "; no native bf16 here: bf16 runs emulated, < 1x is expected" if emulated else ""
            for label, name in (("firm", "FIRM"), ("fedavg", "FedAvg")):
                speedup = med[(label, "float32")] / med[(label, "bfloat16")]
                print(
                    f"  bf16 speed-up of the local step, {name} fast fp32 / {name} fast bf16: {speedup:.2f}x   (target >= 2x{note})"
                )
        rows = [(label if dtype == "float32" else f"{label} {SHORT[dtype]}", (label, dtype)) for label, dtype in med]
        width = max(20, *(len(r) for r, _ in rows))
        for row, key in rows:
            total = sum(phases[key].values())
            shares = ", ".join(f"{p} {100 * v / total:.0f}%" for p, v in sorted(phases[key].items(), key=lambda kv: -kv[1]))
            print(f"  {row:{width}s} {1000 * med[key]:8.1f} ms/step   {shares}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
