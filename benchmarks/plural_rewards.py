"""Issue 18's measurement: the preference predictor trained federated vs centralized vs each group alone.

    python benchmarks/plural_rewards.py [--out runs/plural] [--seeds 0,1,2] [--quick]

On chitchat-dataset's `interesting` ratings (`firm.rewards.config` defaults: participants with at
least 20 conversations of two or more turns are groups, 10 of them unseen, a quarter of each seen
group's items held out), GPO trained by `firm reward train` in five arms:

- `fedavg`, `fedadam`: federated (10 groups sampled per round, one local epoch);
- `fedavg-regression`: federated, the regression head (no few-shot context) instead of GPO;
- `centralized`: the seen groups' items pooled, one epoch-equivalent per round;
- `local`: every seen group trains its own GPO on its own items (unseen groups have no model).

Two stages, each resumable (a finished run is skipped, a run cut short resumes from its checkpoint):

1. **Tuning on a validation split** (`data.holdout=validation`: each seen group's training items
   split again; unseen groups and test items untouched), seed `TUNING_SEED`, four values per arm:
   the client lr (`LR_GRID`) for fedavg, centralized, local and the regression head; the server lr
   (`SERVER_LR_GRID`) for fedadam, at fedavg's client lr. The choice maximises the final mean seen
   alignment on validation (ties to the smaller value); written to `<out>/tuning.json`.
2. **Test runs**: every arm at its chosen value, every seed (`train.seed`; `data.seed` fixed, so the
   split, the groups and the evaluation contexts are the same in every run: paired comparisons).

Figures (`docs/rewards/results.md`, written by this script): alignment score (mean, worst, spread over
groups) on seen groups' test items and on unseen groups, final round, mean and 95 % t-interval over
seeds (`firm.intervals.mean_interval`); paired differences to centralized; convergence speed: the first
round and the items trained on at which the seen mean alignment reaches a target, 50 %, 80 % and 95 %
of the way from the initial to centralized's final alignment (means over seeds); and a no-learning reference,
each group's context-rating histogram as the prediction for every item (the few-shot information
GPO is given, without the text).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

from firm.intervals import mean_interval
from firm.provenance import machine
from firm.rewards.config import RewardConfig, load_reward_config
from firm.rewards.metrics import fairness, group_alignment
from firm.rewards.ratings import LEVELS
from firm.rewards.train import RewardData, contexts_for, load_data, resume_run, run

LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2)
SERVER_LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
TUNING_SEED = 0
TARGET_FRACTIONS = (0.5, 0.8, 0.95)

PAIRS = (
    ("fedavg", "centralized"),
    ("fedadam", "centralized"),
    ("local", "centralized"),
    ("fedadam", "fedavg"),
    ("fedavg", "fedavg-regression"),
    ("local", "fedavg"),
)
"""The paired differences the page reports: federated vs the pooled reference, the server rules, GPO's few-shot
context vs none (the regression head), and sharing vs each group alone."""

ARMS: dict[str, tuple[str, ...]] = {
    "fedavg": ("train.mode=federated", "train.server=fedavg"),
    "fedadam": ("train.mode=federated", "train.server=fedadam"),
    "fedavg-regression": ("train.mode=federated", "train.server=fedavg", "model.kind=regression"),
    "centralized": ("train.mode=centralized",),
    "local": ("train.mode=local",),
}


def _config(out: Path, name: str, overrides: Sequence[str]) -> RewardConfig:
    return load_reward_config(None, [f'output.dir="{out.as_posix()}"', f"output.name={name}", "train.device=auto", *overrides])


def _run(config: RewardConfig, data: RewardData) -> dict[str, Any]:
    """Run (or resume, or skip) one reward run; -> its summary and metrics rows."""
    path = Path(config.output.dir) / config.output.name
    if (path / "config.toml").exists() and load_reward_config(path / "config.toml") != config:
        print(f"plural: {path} was made with other settings: redoing it", file=sys.stderr)
        shutil.rmtree(path)
    if not (path / "summary.json").exists():
        if (path / "checkpoints").is_dir() and any((path / "checkpoints").iterdir()):
            print(f"plural: resuming {path}", file=sys.stderr)
            resume_run(path, data=data, progress=False)
        else:
            shutil.rmtree(path, ignore_errors=True)
            began = time.perf_counter()
            run(config, data=data, progress=False)
            print(f"plural: {path.name} done in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"summary": json.loads((path / "summary.json").read_text(encoding="utf-8")), "rows": rows}


def tune(out: Path, data: RewardData, base: Sequence[str]) -> dict[str, Any]:
    """Stage 1: every arm's grid on the validation view; -> {arm: {"override", "value", "scores"}}."""
    chosen: dict[str, Any] = {}
    for arm, overrides in ARMS.items():
        if arm == "fedadam":
            key, grid = "train.server_lr", SERVER_LR_GRID
            fixed = [f"train.lr={chosen['fedavg']['value']}"]
        else:
            key, grid, fixed = "train.lr", LR_GRID, []
        scores = {}
        for value in grid:
            cfg = _config(
                out / "tuning",
                f"{arm}-{key.split('.')[1]}{value:g}",
                [*base, *overrides, *fixed, f"{key}={value}", f"train.seed={TUNING_SEED}", "data.holdout=validation"],
            )
            scores[value] = _run(cfg, data)["summary"]["final"]["seen"]["mean"]
        best = max(grid, key=lambda v: (scores[v], -v))  # ties to the smaller value
        chosen[arm] = {
            "override": [*fixed, f"{key}={best}"],
            "key": key,
            "value": best,
            "scores": {f"{v:g}": s for v, s in scores.items()},
        }
        print(f"plural: tuned {arm}: {key}={best:g} (validation seen alignment {scores[best]:.4f})", file=sys.stderr)
    return chosen


def histogram_reference(data: RewardData, context: int, seed: int) -> dict[str, dict[str, float]]:
    """The no-learning prediction: each group's context-rating histogram for every one of its queries."""
    contexts, queries = contexts_for(data, context, seed)
    levels = LEVELS
    out: dict[str, dict[str, float]] = {}
    for part, names in (("seen", sorted(data.train)), ("unseen", sorted(data.unseen))):
        scores = {}
        for name in names:
            hist = np.bincount(contexts[name].y.numpy() - 1, minlength=levels).astype(np.float64)
            q = queries[name]
            probs = np.tile(hist / hist.sum(), (len(q), 1))
            scores[name] = group_alignment(probs, q.y.tolist(), q.questions)
        out[part] = fairness(scores).to_dict() if scores else {}
    return out


def first_reach(rows: Sequence[dict[str, Any]], target: float) -> tuple[float, float]:
    """(round, items trained on) of the first evaluated row whose seen mean alignment >= target; (nan, nan) if never."""
    for row in rows:
        seen = row.get("seen") or {}
        if seen and seen["mean"] >= target:
            return float(row["round"]), float(row["samples"])
    return math.nan, math.nan


def _ci(values: Sequence[float], fmt: str = "{:.4f}") -> str:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return f"{len(values) - len(finite)} of {len(values)} never"
    mean, low, high, n = mean_interval(finite)
    if n < 2:
        return fmt.format(mean)
    return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


def write_page(page: Path, out: Path, results: dict[str, list[dict[str, Any]]], tuning: dict[str, Any], reference: dict[str, Any],
               seeds: Sequence[int], base: Sequence[str], command: str, started: float) -> None:  # fmt: skip
    """docs/rewards/results.md: every figure from the run directories, with the command, machine, commit and date."""
    m = machine()
    central = results["centralized"]
    a0 = float(np.mean([r["rows"][0]["seen"]["mean"] for r in central]))
    a_c = float(np.mean([r["summary"]["final"]["seen"]["mean"] for r in central]))
    lines = [
        "# Reward learning on chitchat ratings: federated vs centralized vs each group alone (issue 18)",
        "",
        "Generated by `python benchmarks/plural_rewards.py`; do not edit by hand.",
        "",
        f"- **Command:** `{command}`; every run's settings: `{' '.join(base)}` and the arm's (benchmarks/plural_rewards.py `ARMS`)",
        f"- **Machine:** {m['cpu']}, {m['cores']} cores; torch {m['torch']}, Python {m['python']}; commit {m['commit']}",
        f"- **Date:** {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time of this invocation {(time.time() - started) / 60:.0f} min",
        f"- **Seeds:** {', '.join(map(str, seeds))} (`train.seed`; `data.seed` = 0 fixed: the same split, groups and evaluation contexts in every run)",
        "- Intervals: 95 % Student-t over seeds (`firm.intervals.mean_interval`). Alignment = 1 - JS distance (docs/algorithms/plural-rewards.md).",
        "",
        "## Alignment score at the last round",
        "",
        "| arm | tuned | seen: mean | seen: worst group | seen: spread (sd) | unseen: mean | unseen: worst group | unseen: spread (sd) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, runs in results.items():
        seen = [r["summary"]["final"]["seen"] for r in runs]
        unseen = [r["summary"]["final"]["unseen"] for r in runs]
        cells = [_ci([s[k] for s in seen]) for k in ("mean", "worst", "spread")]
        cells += [_ci([u[k] for u in unseen]) if all(unseen) else "n/a (no model)" for k in ("mean", "worst", "spread")]
        t = tuning[arm]
        lines.append(f"| {arm} | {t['key']}={t['value']:g} | " + " | ".join(cells) + " |")
    ref = reference
    lines += [
        f"| context histogram (no learning) | - | {ref['seen']['mean']:.4f} | {ref['seen']['worst']:.4f} | {ref['seen']['spread']:.4f} | "
        f"{ref['unseen']['mean']:.4f} | {ref['unseen']['worst']:.4f} | {ref['unseen']['spread']:.4f} |",
        "",
        "Initial (untrained GPO, round 0) seen mean alignment: " + _ci([r["rows"][0]["seen"]["mean"] for r in results["fedavg"]]),
        "",
        "## Paired differences (same seed), last round",
        "",
        "| difference | seen mean | seen worst | unseen mean | unseen worst |",
        "|---|---|---|---|---|",
    ]
    for first, second in PAIRS:
        row = [f"{first} - {second}"]
        for part in ("seen", "unseen"):
            for key in ("mean", "worst"):
                pairs = list(zip(results[first], results[second], strict=True))
                if not all(x["summary"]["final"][part] and y["summary"]["final"][part] for x, y in pairs):
                    row.append("n/a")
                    continue
                diffs = [x["summary"]["final"][part][key] - y["summary"]["final"][part][key] for x, y in pairs]
                row.append(_ci(diffs, "{:+.4f}"))
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "## Convergence speed",
        "",
        "The first round (and the items trained on until then) at which the seen mean alignment reaches a target: a fraction",
        f"of the way from the initial ({a0:.4f}) to centralized's final ({a_c:.4f}) seen mean alignment, means over seeds.",
        "A centralized round is one pass over all seen groups' items; a federated round one local epoch on each of the",
        "round's sampled groups, so items trained on is the like-for-like count. 'k of n never': k seeds never reached it.",
        "",
        "| arm | " + " | ".join(f"{f:.0%}: {a0 + f * (a_c - a0):.4f}, rounds | items" for f in TARGET_FRACTIONS) + " |",
        "|---|" + "---|---|" * len(TARGET_FRACTIONS),
    ]
    targets = {f"{f:g}": a0 + f * (a_c - a0) for f in TARGET_FRACTIONS}
    for arm, runs in results.items():
        cells = []
        for target in targets.values():
            reach = [first_reach(r["rows"], target) for r in runs]
            cells += [_ci([x[0] for x in reach], "{:.1f}"), _ci([x[1] for x in reach], "{:.0f}")]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "## Tuning (validation split, seed 0, final seen mean alignment)", "", "| arm | grid: score |", "|---|---|"]
    for arm, t in tuning.items():
        lines.append(
            f"| {arm} | " + ", ".join(f"{t['key']}={v}: {s:.4f}" for v, s in t["scores"].items()) + f" -> **{t['value']:g}** |"
        )
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"tuning": tuning, "reference": reference, "targets": targets}, indent=2) + "\n")
    print(f"plural: wrote {page}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/plural"))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="3 rounds, seeds 0,1, page under <out>: a pipeline check")
    parser.add_argument("--page", type=Path, default=Path("docs/rewards/results.md"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")] if not args.quick else [0, 1]
    rounds = 3 if args.quick else args.rounds
    page = args.out / "results.md" if args.quick else args.page
    base = [f"train.rounds={rounds}", "train.checkpoint_every=5"]
    started = time.time()
    command = " ".join(["python benchmarks/plural_rewards.py", *sys.argv[1:]])
    probe = _config(args.out, "probe", base)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    validation = load_data(_config(args.out, "probe", [*base, "data.holdout=validation"]), device)
    tuning_path = args.out / "tuning.json"
    tuning = tune(args.out, validation, base)
    tuning_path.parent.mkdir(parents=True, exist_ok=True)
    tuning_path.write_text(json.dumps(tuning, indent=2) + "\n")
    data = load_data(probe, device)
    results: dict[str, list[dict[str, Any]]] = {}
    for arm, overrides in ARMS.items():
        results[arm] = [
            _run(
                _config(args.out / "test", f"{arm}-s{seed}", [*base, *overrides, *tuning[arm]["override"], f"train.seed={seed}"]),
                data,
            )
            for seed in seeds
        ]
    reference = histogram_reference(data, probe.model.context, probe.data.seed)
    write_page(page, args.out, results, tuning, reference, seeds, base, command, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
