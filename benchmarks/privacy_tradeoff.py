"""Issue 19's measurement: reward vs epsilon for FIRM (one upload) and FMGDA (M uploads) under client-level DP.

    python benchmarks/privacy_tradeoff.py [--out runs/privacy] [--seeds 0,1,2] [--quick] [--jobs 2]

`--jobs N` runs the grid in N worker processes of one compute thread each (`--shard I/N`: every N-th
run from the I-th), then skips the completed runs and writes the page. Across checkouts
(`--records`, default `docs/results/privacy-runs.json.gz`; firm.records): the completed runs' small
files are saved every two minutes and restored first, so the run continues in a fresh clone.

The one-upload argument: every uploaded vector is clipped and noised, and under a fixed budget the
whole update has L2 bound C. FIRM's single delta gets all of it; FMGDA's M per-objective deltas
share it (firm.privacy.mechanism clips them together), so each of them carries less signal against
the same noise. Whether that costs FMGDA reward is what this measures.

Setup: the evidence task (`helpful-vs-concise`, docs/tasks.md) at p = (1/2, 1/2), with
`federation.num_clients=8`, 2 per round (q = 1/4), 3 rounds, `server` mode. Each algorithm runs at its
issue-17 learning rate (the evidence run's tuning on a validation split: firm Adam 5e-3, fmgda SGD
25; `LEARNING_RATES`).

1. **Clip norm, per algorithm** (seed 0): a run with privacy on at noise 0 and a clip that never
   binds (C = 1e9) logs the updates' norms (`server.privacy.mean_norm`); C = their median over
   rounds, Andrew et al.'s (2021) target of clipping about half of the updates. Both algorithms are
   then clipped at their own typical norm, so neither is clipped harder than the other.
2. **The grid**: each algorithm at every noise multiplier of `SIGMAS` and without privacy, every
   seed (about 10 min per run on one core of a 2-core CPU: 20 runs). The same sigma gives both algorithms the same
   epsilon (same N, k, rounds, delta): the comparison is at equal budget by construction.

Figures (`docs/privacy-results.md`, written by this script): per (algorithm, sigma), epsilon at
delta = 1e-3 and each objective's final held-out reward minus the base model's (paired over the
same prompts), mean and 95 % t-interval over seeds; and FIRM minus FMGDA of the mean gain over the
objectives, paired by seed, at each sigma. Resumable: a completed run is skipped (firm.sweep.run_point).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from firm.intervals import mean_interval
from firm.provenance import machine
from firm.records import RecordSaver, resume_from
from firm.sweep import run_point
from firm.validation import load_config

LEARNING_RATES = {"firm": ("adam", 5e-3), "fmgda": ("sgd", 25.0)}
SIGMAS = (0.5, 2.0)
DELTA = 1e-3
TASK = ["--config", "helpful-vs-concise"]
SETUP = [
    "federation.num_clients=8",
    "federation.clients_per_round=2",
    "federation.rounds=3",
    "objectives.preference=[0.5,0.5]",
    "aggregation.max_norm_ratio=0",
    "model.compute_dtype=float32",
]
QUICK = [  # the tiny random model: a pipeline check in a few minutes, not evidence
    "model.name=tiny",
    'objectives.names=["positiveness","conciseness"]',
    'data.sources=["builtin"]',
    "data.partition=iid",
    "data.provocative_ratios=[]",
    "federation.rounds=2",
    "rollout.max_new_tokens=12",
    "eval.num_prompts=8",
]


def _point(out: Path, name: str, overrides: list[str], quick: bool) -> dict[str, Any]:
    path = None if quick else "helpful-vs-concise"
    config = load_config(
        path, [*SETUP, *(QUICK if quick else []), f'output.dir="{out.as_posix()}"', f"output.name={name}", *overrides]
    )
    began = time.perf_counter()
    summary = run_point(config)
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    print(f"privacy: {name} ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
    return {"summary": summary, "rows": rows}


def _algorithm(name: str) -> list[str]:
    optimizer, lr = LEARNING_RATES[name]
    return [f"algorithm.name={name}", f"algorithm.optimizer={optimizer}", f"algorithm.lr={lr}"]


def clip_norms(out: Path, quick: bool, shard: int = 0, shards: int = 1) -> dict[str, float]:
    """Stage 1: each algorithm's median update norm over the rounds of a never-binding, noise-free private run.

    Sharded, shard i runs the algorithms i, i + N, ... and waits for the other shards' runs to complete."""
    probe = ["privacy.mode=server", "privacy.noise_multiplier=0", "privacy.clip_norm=1e9", f"privacy.delta={DELTA}"]
    for i, name in enumerate(LEARNING_RATES):
        if i % shards == shard:
            _point(out / "clip", name, [*_algorithm(name), *probe, "federation.seed=0"], quick)
    norms = {}
    for name in LEARNING_RATES:
        summary = out / "clip" / name / "summary.json"
        while not (summary.is_file() and json.loads(summary.read_text(encoding="utf-8")).get("status") == "completed"):
            time.sleep(30)  # another shard's run
        rows = [json.loads(line) for line in (out / "clip" / name / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        per_round = [r["server"]["privacy"]["mean_norm"] for r in rows if r["server"]["privacy"]["mean_norm"]]
        norms[name] = float(statistics.median(per_round))
    return norms


def _gains(summary: dict[str, Any]) -> dict[str, float]:
    return {k: summary["final_eval"][k] - summary["initial_eval"][k] for k in summary["final_eval"]}


def _ci(values: list[float], fmt: str = "{:+.4f}") -> str:
    mean, low, high, n = mean_interval(values)
    return fmt.format(mean) if n < 2 else f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


def _plan(norms: dict[str, float], seeds: list[int]) -> list[tuple[tuple[str, float | None], str, list[str]]]:
    """Stage 2's runs: ((algorithm, sigma or None for no privacy), run name, overrides), in page order."""
    plan = []
    for sigma in (None, *SIGMAS):  # None: no privacy at all
        for name in LEARNING_RATES:
            dp = [] if sigma is None else ["privacy.mode=server", f"privacy.noise_multiplier={sigma}",
                                           f"privacy.clip_norm={norms[name]:.6g}", f"privacy.delta={DELTA}"]  # fmt: skip
            label = f"{name}-{'nodp' if sigma is None else f'sigma{sigma:g}'}"
            for seed in seeds:
                plan.append(((name, sigma), f"{label}-s{seed}", [*_algorithm(name), *dp, f"federation.seed={seed}"]))
    return plan


def _records_key(quick: bool) -> dict[str, Any]:
    """What the archived runs were made for: a change to the setup, rates or sigmas starts a new archive."""
    return {"benchmark": "privacy_tradeoff", "quick": quick, "setup": SETUP, "learning_rates": LEARNING_RATES,
            "sigmas": list(SIGMAS), "delta": DELTA}  # fmt: skip


def _shards(args: argparse.Namespace) -> None:
    """Run the grid in `args.jobs` worker processes (`--shard i/jobs`, one compute thread each) and wait for all;
    the parent keeps the records (the workers save none)."""
    argv = ["--out", str(args.out), "--seeds", args.seeds, "--records", "", *(["--quick"] if args.quick else [])]
    procs = [subprocess.Popen([sys.executable, __file__, *argv, "--shard", f"{i}/{args.jobs}"]) for i in range(args.jobs)]
    codes = [proc.wait() for proc in procs]
    if any(codes):
        raise SystemExit(f"privacy: a shard failed (exit codes {codes}); run the command again to resume")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/privacy"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="the tiny model, 2 rounds, seeds 0,1; page under --out")
    parser.add_argument("--page", type=Path, default=Path("docs/privacy-results.md"))
    parser.add_argument("--jobs", type=int, default=1, help="worker processes, one compute thread each (2 on a 2-core CPU)")
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th grid run from the I-th; no page")
    parser.add_argument(
        "--records",
        help="gzip JSON archive of the completed runs' small files (firm.records), restored first and saved every "
        'two minutes (default docs/results/privacy-runs.json.gz, none for --quick; "" for none)',
    )
    args = parser.parse_args()
    shard, shards = (int(x) for x in args.shard.split("/"))
    if shards > 1:
        import torch

        torch.set_num_threads(1)
    seeds = [0, 1] if args.quick else [int(s) for s in args.seeds.split(",")]
    page = args.out / "privacy-results.md" if args.quick else args.page
    default = None if args.quick else Path("docs/results/privacy-runs.json.gz")
    records = default if args.records is None else (Path(args.records) if args.records else None)
    key = _records_key(args.quick)
    resume_from(args.out, records, key, "privacy")
    started = time.time()
    with RecordSaver(args.out, records, key, label="privacy"):
        if args.jobs > 1 and shards == 1:
            _shards(args)
        norms = clip_norms(args.out, args.quick, shard, shards)
        plan = _plan(norms, seeds)
        if shards > 1:
            for _, run_name, overrides in plan[shard::shards]:
                _point(args.out / "grid", run_name, overrides, args.quick)
            return 0
        grid: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
        for group, run_name, overrides in plan:
            grid.setdefault(group, []).append(_point(args.out / "grid", run_name, overrides, args.quick))
    write_page(page, grid, norms, seeds, started, " ".join(["python benchmarks/privacy_tradeoff.py", *sys.argv[1:]]))
    return 0


def write_page(page: Path, grid: dict[tuple[str, float | None], list[dict[str, Any]]], norms: dict[str, float],
               seeds: list[int], started: float, command: str) -> None:  # fmt: skip
    """docs/privacy-results.md from the runs: the table, FIRM - FMGDA per sigma, the command, machine, commit, date."""
    m = machine()
    any_run = next(iter(grid.values()))[0]["summary"]
    names = list(any_run["final_eval"])
    lines = [
        "# Reward vs epsilon: FIRM (one upload) and FMGDA (M uploads) under client-level DP (issue 19)",
        "",
        "Generated by `python benchmarks/privacy_tradeoff.py`; do not edit by hand. Setup and method: its docstring and docs/privacy.md.",
        "",
        f"- **Command:** `{command}`",
        f"- **Machine:** {m['cpu']}, {m['cores']} cores; torch {m['torch']}, Python {m['python']}; commit {m['commit']}",
        f"- **Date:** {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {(time.time() - started) / 60:.0f} min",
        f"- **Seeds:** {', '.join(map(str, seeds))}; clip norms C (median update norm, seed 0): "
        + ", ".join(f"{k} {v:.4g}" for k, v in norms.items()),
        "",
        "| algorithm | sigma | epsilon at delta 1e-3 | " + " | ".join(f"{n} gain" for n in names) + " | mean gain |",
        "|---|---|---|" + "---|" * (len(names) + 1),
    ]
    for (name, sigma), runs in grid.items():
        eps = runs[0]["summary"].get("privacy", {}).get("epsilon") if sigma is not None else None
        eps_cell = "no DP" if sigma is None else ("inf (no noise)" if eps is None else f"{eps:.3g}")
        gains = [_gains(r["summary"]) for r in runs]
        cells = [_ci([g[n] for g in gains]) for n in names] + [_ci([sum(g.values()) / len(g) for g in gains])]
        lines.append(f"| {name} | {'-' if sigma is None else f'{sigma:g}'} | {eps_cell} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "FIRM minus FMGDA, mean gain over the objectives, paired by seed:",
        "",
        "| sigma | difference | verdict |",
        "|---|---|---|",
    ]
    for sigma in (None, *SIGMAS):
        firm, fmgda = grid["firm", sigma], grid["fmgda", sigma]
        diffs = [
            sum(_gains(a["summary"]).values()) / len(names) - sum(_gains(b["summary"]).values()) / len(names)
            for a, b in zip(firm, fmgda, strict=True)
        ]
        _, low, high, n = mean_interval(diffs)
        verdict = (
            "inconclusive" if n < 2 or math.isnan(low) or low <= 0 <= high else ("FIRM higher" if low > 0 else "FMGDA higher")
        )
        lines.append(f"| {'no DP' if sigma is None else f'{sigma:g}'} | {_ci(diffs)} | {verdict} |")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"privacy: wrote {page}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
