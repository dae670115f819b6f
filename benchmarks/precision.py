"""Benchmark: do bfloat16 forwards and backwards keep FIRM's numbers right? (model.compute_dtype)

Two copies of the same policy, float32 and bfloat16 (the same base weights, the bfloat16 one
rounded; the same float32 adapter, perturbed away from the identity as after some training). For
each of `--batches` rollouts, sampled by the float32 copy and scored once, both copies compute on
the *same* tokens, rewards and advantages (`PolicyGradientProblem.on_policy_copy`):

- per-token log-probabilities of the sampled completions (mean, 99th percentile and max absolute
  difference over the real tokens), with the adapter on (pi_theta) and off (pi_ref);
- the M per-objective gradients g_m: cosine between the float32 and bfloat16 g_m, and the ratio
  of their norms;
- FIRM's weights lambda from each copy's Gram matrix (same anchor p and reg): max |difference|;
- the time of one local step's gradient work (forward + M backward) in each dtype, and the ratio.

    python benchmarks/precision.py [--model smollm2-135m] [--batches 3] [--prompts 2] [--samples 4] [--tokens 24]

`--train-seeds 0,1,2` adds short FIRM training runs (`--train-rounds` rounds of 2 clients x 1 local
step, 8 held-out prompts x 2 samples) in float32 for each seed and in bfloat16 for each of
`--bf16-seeds` (default the same), and says, round by round and objective by objective, whether
the bfloat16 runs' mean held-out reward lies within the range of the float32 runs over the seeds
(the seed-to-seed spread). Completed runs in `--train-dir` are read back, not run again.

The tolerances the tests hold bfloat16 to (tests/test_precision.py) are stated in `TOLERANCES`,
and this script says whether each measured figure is within them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from firm.client import problem_sampler
from firm.data import federated_prompts
from firm.logprobs import token_logprobs
from firm.objectives import resolve_objective
from firm.policy import Policy, build_policy
from firm.policy_gradient import PolicyGradientProblem
from firm.precision import cpu_bf16_features
from firm.solvers import firm_weights
from firm.validation import load_config

TOLERANCES = {"logprob_p99_abs": 0.25, "logprob_mean_abs": 0.06, "grad_cosine_min": 0.99, "weights_max_abs": 0.01}
"""What bfloat16 must hold against float32: about 1.5x the figures measured on SmolLM2 (docs/performance.md,
section bfloat16: mean 0.037, p99 0.156, cosine >= 0.9968, lambda 0.0017), so a regression shows."""


@dataclass
class Agreement:
    """bfloat16 vs float32 on the same rollouts (module docstring)."""

    logprob_max_abs: float = 0.0
    logprob_p99_abs: float = 0.0
    logprob_mean_abs: float = 0.0
    ref_logprob_max_abs: float = 0.0
    grad_cosines: list[float] = field(default_factory=list)
    grad_norm_ratios: list[float] = field(default_factory=list)
    weights_max_abs: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: {"float32": 0.0, "bfloat16": 0.0})

    def within(self) -> dict[str, bool]:
        """Each figure against TOLERANCES."""
        return {
            "logprob_p99_abs": self.logprob_p99_abs <= TOLERANCES["logprob_p99_abs"],
            "logprob_mean_abs": self.logprob_mean_abs <= TOLERANCES["logprob_mean_abs"],
            "grad_cosine_min": min(self.grad_cosines) >= TOLERANCES["grad_cosine_min"],
            "weights_max_abs": self.weights_max_abs <= TOLERANCES["weights_max_abs"],
        }


def policy_pair(config: Any, perturb: float = 0.02) -> tuple[Policy, Policy]:
    """(float32, bfloat16) copies of the config's policy with the same, perturbed, float32 adapter."""
    import dataclasses
    import warnings

    f32 = build_policy(dataclasses.replace(config.model, compute_dtype="float32"), config.lora, config.federation.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bfloat16 emulated on this CPU: measured anyway
        bf16 = build_policy(dataclasses.replace(config.model, compute_dtype="bfloat16"), config.lora, config.federation.seed)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in f32.params.values():
            p.add_(perturb * torch.randn(p.shape, generator=gen))
    bf16.set_adapter(f32.get_adapter())
    return f32, bf16


def measure(config: Any, batches: int) -> Agreement:
    """The agreement figures over `batches` rollouts of client 0's prompts (module docstring)."""
    f32, bf16 = policy_pair(config)
    objectives = [(n, resolve_objective(n)) for n in config.objectives.names]
    fed = config.federation
    shard = federated_prompts(config.data, fed.num_clients, config.eval.num_prompts, fed.seed).clients[0]
    m = len(objectives)
    anchor = torch.full((m,), 1.0 / m, dtype=torch.float64)
    out = Agreement()
    sample_problem = problem_sampler(f32, objectives, shard, config, 1, 0)
    diffs: list[torch.Tensor] = []
    for step in range(batches):
        problem = sample_problem(step)
        assert isinstance(problem, PolicyGradientProblem)
        other = problem.on_policy_copy(bf16)
        mask = problem.mask.bool()
        ro, temp = problem.rollout, problem.temperature
        with torch.no_grad():
            lp32 = token_logprobs(f32, ro, temp, problem.logprobs)
            lp16 = token_logprobs(bf16, ro, temp, problem.logprobs)
        diff = (lp32 - lp16).abs()[mask]
        diffs.append(diff)
        out.logprob_max_abs = max(out.logprob_max_abs, float(diff.max()))
        out.ref_logprob_max_abs = max(
            out.ref_logprob_max_abs, float((problem.ref_logprobs - other.ref_logprobs).abs()[mask].max())
        )
        start = time.perf_counter()
        g32 = problem.objective_gradients().double()
        out.seconds["float32"] += time.perf_counter() - start
        start = time.perf_counter()
        g16 = other.objective_gradients().double()
        out.seconds["bfloat16"] += time.perf_counter() - start
        out.grad_cosines += torch.nn.functional.cosine_similarity(g32, g16, dim=1).tolist()
        out.grad_norm_ratios += (g16.norm(dim=1) / g32.norm(dim=1)).tolist()
        w32 = firm_weights(g32 @ g32.T, anchor, config.algorithm.reg)
        w16 = firm_weights(g16 @ g16.T, anchor, config.algorithm.reg)
        out.weights_max_abs = max(out.weights_max_abs, float((w32 - w16).abs().max()))
    every = torch.cat(diffs)
    out.logprob_mean_abs = float(every.mean())
    out.logprob_p99_abs = float(torch.quantile(every.double(), 0.99))
    return out


def training_curves(
    model: str, names: list[str], seeds: dict[str, list[int]], rounds: int, out_dir: str
) -> dict[str, list[list[dict[str, float]]]]:
    """dtype -> per seed -> per round (0 = base) the held-out mean reward per objective, of short FIRM runs.

    `seeds`: dtype -> its seeds. A run whose directory already holds a completed summary is read, not
    run again, so an interrupted comparison resumes where it stopped."""
    import json
    import shutil
    import warnings
    from pathlib import Path

    from firm.train import run

    curves: dict[str, list[list[dict[str, float]]]] = {dtype: [] for dtype in seeds}
    for dtype, dtype_seeds in seeds.items():
        for seed in dtype_seeds:
            done = Path(out_dir) / f"precision-{dtype}-seed{seed}"
            if (done / "summary.json").is_file():
                summary = json.loads((done / "summary.json").read_text(encoding="utf-8"))
                if summary.get("status") == "completed":
                    rows = [json.loads(line) for line in (done / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
                    curves[dtype].append([summary["initial_eval"]] + [r["eval"] for r in rows if r.get("eval")])
                    print(f"  seed {seed} {dtype}: read from {done}", flush=True)
                    continue
            if done.exists():
                shutil.rmtree(done)  # an interrupted run: start it again
            config = load_config(
                None,
                [
                    f"model.name={model}",
                    f"model.compute_dtype={dtype}",
                    "objectives.names=[" + ",".join(f'"{n}"' for n in names) + "]",
                    f"federation.seed={seed}",
                    f"federation.rounds={rounds}",
                    "federation.num_clients=2",
                    "federation.clients_per_round=2",
                    "algorithm.local_steps=1",
                    "rollout.prompts_per_step=2",
                    "rollout.samples_per_prompt=4",
                    "rollout.max_new_tokens=24",
                    "eval.num_prompts=8",
                    "eval.samples_per_prompt=2",
                    f'output.dir="{out_dir}"',
                    f"output.name=precision-{dtype}-seed{seed}",
                    "output.progress=false",
                    "output.report=false",
                ],
            )
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                result = run(config)
            curve = [result.summary["initial_eval"]] + [row["eval"] for row in result.metrics if row.get("eval")]
            curves[dtype].append(curve)
            print(f"  seed {seed} {dtype}: {time.perf_counter() - start:.0f} s, final {curve[-1]}", flush=True)
    return curves


def within_spread(
    curves: dict[str, list[list[dict[str, float]]]], names: list[str]
) -> list[tuple[int, str, float, float, float, bool]]:
    """(round, objective, bf16 mean over seeds, fp32 min over seeds, fp32 max, bf16 mean within [min, max])."""
    rows = []
    for r in range(len(curves["float32"][0])):
        for name in names:
            f32 = [c[r][name] for c in curves["float32"]]
            b16 = sum(c[r][name] for c in curves["bfloat16"]) / len(curves["bfloat16"])
            rows.append((r, name, b16, min(f32), max(f32), min(f32) <= b16 <= max(f32)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--objectives", default="helpfulness,harmlessness")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2, help="B")
    parser.add_argument("--samples", type=int, default=4, help="G")
    parser.add_argument("--tokens", type=int, default=24, help="max new tokens")
    parser.add_argument("--train-seeds", default="", help="e.g. 0,1,2: also run short float32 trainings on these seeds")
    parser.add_argument("--bf16-seeds", default="", help="the seeds of the bfloat16 trainings (default: --train-seeds)")
    parser.add_argument("--train-rounds", type=int, default=3)
    parser.add_argument("--train-dir", default="runs/precision")
    args = parser.parse_args()
    names = args.objectives.split(",")
    config = load_config(
        None,
        [
            f"model.name={args.model}",
            "objectives.names=[" + ",".join(f'"{n}"' for n in names) + "]",
            f"rollout.prompts_per_step={args.prompts}",
            f"rollout.samples_per_prompt={args.samples}",
            f"rollout.max_new_tokens={args.tokens}",
        ],
    )
    features = cpu_bf16_features()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"CPU: {torch.cpu.get_capabilities().get('cpu_name', '?')}, native bfloat16: {', '.join(features) or 'none (emulated)'}"
    )
    print(
        f"model {args.model}, objectives {names}, {args.batches} rollouts of B={args.prompts} x G={args.samples}, T={args.tokens}\n"
    )
    ok: dict[str, bool] = {}
    if args.batches > 0:  # --batches 0: only the trainings
        a = measure(config, args.batches)
        ok = a.within()
        t = TOLERANCES
        print(
            f"log-prob |bf16 - fp32|, pi_theta: mean {a.logprob_mean_abs:.4f}, 99th percentile {a.logprob_p99_abs:.4f}, "
            f"max {a.logprob_max_abs:.4f}   (tolerance mean {t['logprob_mean_abs']}, p99 {t['logprob_p99_abs']})"
        )
        print(f"log-prob |bf16 - fp32|, pi_ref:   max {a.ref_logprob_max_abs:.4f}")
        print(
            f"gradient cosine per objective and batch: min {min(a.grad_cosines):.4f}, mean {sum(a.grad_cosines) / len(a.grad_cosines):.4f}   (tolerance >= {t['grad_cosine_min']})"
        )
        print(f"gradient norm ratio bf16 / fp32: {min(a.grad_norm_ratios):.3f} to {max(a.grad_norm_ratios):.3f}")
        print(f"FIRM weights |lambda_bf16 - lambda_fp32|: max {a.weights_max_abs:.4f}   (tolerance {t['weights_max_abs']})")
        print(f"within tolerance: {', '.join(f'{k} {v}' for k, v in ok.items())}")
        s = a.seconds
        print(
            f"gradient time (forward + M backward, {args.batches} batches): fp32 {s['float32']:.2f} s, bf16 {s['bfloat16']:.2f} s, bf16 speed-up {s['float32'] / s['bfloat16']:.2f}x"
        )
    if args.train_seeds:
        seeds = {"float32": [int(x) for x in args.train_seeds.split(",")]}
        seeds["bfloat16"] = [int(x) for x in args.bf16_seeds.split(",")] if args.bf16_seeds else seeds["float32"]
        print(f"\nshort FIRM trainings, {args.train_rounds} rounds, seeds {seeds}:")
        rows = within_spread(training_curves(args.model, names, seeds, args.train_rounds, args.train_dir), names)
        print("round  objective        bf16 mean   fp32 min   fp32 max   within")
        for r, name, b16, lo, hi, inside in rows:
            print(f"{r:5d}  {name:15s} {b16:9.4f}  {lo:9.4f}  {hi:9.4f}   {inside}")
        print(f"bf16 within the float32 seed spread: {sum(row[-1] for row in rows)} of {len(rows)} (round, objective) cells")
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
