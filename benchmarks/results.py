"""Regenerate docs/results.md and its plots from the run directories of benchmarks/evidence.py.

    python benchmarks/results.py [runs/evidence] [--docs docs]

Reads `<out>/evidence.json` (command, machine, commit, date, learning rates), `<out>/tuning.json`,
the sweep `<out>/sweep` and the references `<out>/references`; writes `<docs>/results.md` and
small PNGs under `<docs>/results/`. Every verdict in the claims table is computed here from the
intervals (firm.report.claims.verdict), never written by hand; the page says which profile made it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from firm.pareto import improvement_hypervolume
from firm.report import COMPARISON_PLOTS
from firm.report.claims import (
    eval_curve,
    gain_per_mb,
    mean_drift,
    mean_gain,
    over,
    paired,
    paired_separation,
    per_seed,
    tradeoff_by_seed,
    tradeoff_verdict,
    upload_mb,
    upload_per_client_round,
    verdict,
    worst_early_change,
)
from firm.report.claims import oscillation as oscillation_of
from firm.report.load import ReportError, Run, Sweep, load_run, load_sweep
from firm.report.seeds import Estimate, front_points, hypervolume_estimate, runs_pareto

FIRM = "firm"
EARLY_ROUNDS = 2
PLOTS = {"front": "front", "rewards": "rewards", "drift": "drift"}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _t(e: Estimate, fmt: str = "{:+.4f}") -> str:
    if e.n == 0 or not math.isfinite(e.mean):
        return "n/a"
    if e.n < 2:
        return f"{fmt.format(e.mean)} (n = 1)"
    return f"{fmt.format(e.mean)} [{fmt.format(e.low)}, {fmt.format(e.high)}]"


def _bold(v: str) -> str:
    return f"**{v}**"


def _pref(p: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{w:g}" for w in p) + ")"


def budget_section(sweep: Sweep, names: list[str]) -> list[str]:
    """Do FedAvg's two extreme preferences separate by more than 3 paired standard errors on every objective?"""
    lines = ["## Is the budget large enough?", ""]
    if len(names) != 2:
        return [*lines, f"(the check is defined for two objectives; this task has {len(names)})"]
    lines.append(
        "FedAvg's runs at the two extreme preferences are evaluated on the same prompts with the same sampling "
        "seeds; the separation is their final reward difference (the run favouring the first objective minus the "
        "one favouring the second) over its paired standard error (prompts as the unit). Adequate: each extreme "
        "wins on its own objective by more than 3 SE."
    )
    lines += [
        "",
        "| seed | " + " | ".join(f"{n}: diff / SE" for n in names) + " | > 3 SE on all? |",
        "|---" * (len(names) + 2) + "|",
    ]
    adequate = []
    for seed in sweep.seeds:
        points = [p for p in sweep.usable("fedavg", seed) if p.run is not None]
        if len(points) < 2:
            continue
        m0 = max(points, key=lambda p: p.preference[0])
        m1 = min(points, key=lambda p: p.preference[0])
        assert m0.run is not None and m1.run is not None
        sep = paired_separation(m0.run, m1.run, names)
        if not sep:
            continue
        # each extreme must win on its own objective: d = r(p favouring the first) - r(p favouring the second)
        ok = sep[names[0]][0] > 3 * sep[names[0]][1] and all(-d > 3 * se for n, (d, se) in sep.items() if n != names[0])
        adequate.append(ok)
        cells = [f"{d:+.4f} / {se:.4f} = {d / se if se else math.inf:+.1f}" for d, se in (sep[n] for n in names)]
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")
    if not adequate:
        lines.append("\n(no FedAvg pair of extreme preferences with per-prompt figures)")
    elif all(adequate):
        lines.append("\n**The budget separates FedAvg's extreme preferences at every seed.**")
    else:
        lines.append(
            f"\n**The budget is too small:** FedAvg's extreme preferences separate by > 3 SE on every objective at "
            f"{sum(adequate)} of {len(adequate)} seeds: differences between algorithms smaller than that cannot be resolved either."
        )
    return lines


def arm_table(sweep: Sweep, names: list[str]) -> list[str]:
    """Final rewards per arm and preference: mean [95 % interval] over seeds (firm.report.seeds.front_points)."""
    lines = ["## Final held-out rewards", ""]
    lines += ["| arm | p | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for label in sweep.arms:
        for fp in front_points(sweep, label):
            cells = [_t(e, "{:.4f}") for e in fp.rewards]
            lines.append(f"| {label} | {'any' if fp.preference is None else _pref(fp.preference)} | " + " | ".join(cells) + " |")
    base = next((p.run.base_eval for p in sweep.points if p.run is not None), None)
    if base:
        lines.append("| base model | - | " + " | ".join(f"{base[n]:.4f}" for n in names) + " |")
    return lines


def arm_statistics(sweep: Sweep, names: list[str]) -> dict[str, dict[str, dict[int, float]]]:
    """statistic -> arm -> seed -> the statistic's mean over the arm's points at that seed, computed once
    for the claims and the per-arm table (firm.report.claims)."""
    statistics: dict[str, Callable[[Run], float]] = {
        "drift": mean_drift,
        "oscillation": lambda r: oscillation_of(eval_curve(r, names)),
        "early": lambda r: worst_early_change(eval_curve(r, names), EARLY_ROUNDS),
        "upload": upload_per_client_round,
        "mean_gain": lambda r: mean_gain(r, names),
        "mb": upload_mb,
    }
    out = {key: {a: per_seed(sweep, a, f) for a in sweep.arms} for key, f in statistics.items()}
    out["gain"] = {a: gain_per_mb(out["mean_gain"][a], out["mb"][a]) for a in sweep.arms}
    return out


def claims_section(
    sweep: Sweep, names: list[str], hv: dict[str, Any], stats: dict[str, dict[str, dict[int, float]]]
) -> list[str]:
    """The claims table: every row's verdict from its interval."""
    rows: list[tuple[str, str, str]] = []
    if FIRM not in sweep.arms:
        return ["## Claims", "", f"(the sweep has no `{FIRM}` arm: no claims to decide)"]
    baselines = [a for a in sweep.arms if a != FIRM]
    # ordered trade-off
    for label in sweep.arms:
        if not sweep.uses_preference(label):
            continue
        for m, name in enumerate(names):
            rhos = tradeoff_by_seed(sweep, label, m)
            counts = {len(sweep.usable(label, seed)) for seed in rhos}
            e, v = tradeoff_verdict(rhos, counts.pop() if len(counts) == 1 else 0)
            rows.append((f"ordered trade-off, {label}: Spearman(p_{name}, final {name}) > 0", _t(e, "{:+.3f}"), v))
    # hypervolume
    by_seed = hv.get("by_seed") or {}

    def hv_of(label: str) -> dict[int, float]:
        return {
            int(s): summary["hypervolume"][label]
            for s, summary in by_seed.items()
            if s.isdigit() and label in summary.get("hypervolume", {})  # "None": a one-seed sweep of an older firm
        }

    for b in baselines:
        e = paired(hv_of(FIRM), hv_of(b))
        rows.append((f"hypervolume: FIRM - {b} > 0", _t(e, "{:+.5f}"), verdict(e, ">")))
    for b in (a for a in baselines if not sweep.uses_preference(a)):  # like with like: one point each
        e = paired(one_point_hypervolume(sweep, hv, FIRM), one_point_hypervolume(sweep, hv, b))
        rows.append(
            (f"hypervolume, one point each (FIRM at p nearest uniform): FIRM - {b} > 0", _t(e, "{:+.5f}"), verdict(e, ">"))
        )
    # drift, smoothness, common descent, communication
    drift, osc, early, gain = stats["drift"], stats["oscillation"], stats["early"], stats["gain"]
    for b in (a for a in ("mgda", "fedavg") if a in sweep.arms):
        e = paired(drift[FIRM], drift[b])
        rows.append((f"drift.updates (mean over rounds): FIRM - {b} < 0", _t(e), verdict(e, "<")))
    for b in baselines:
        e = paired(osc[FIRM], osc[b])
        rows.append((f"smoothness: oscillation FIRM - {b} < 0", _t(e), verdict(e, "<")))
    for b in baselines:
        e = paired(early[FIRM], early[b])
        rows.append(
            (f"common descent: worst objective's change over rounds 0-{EARLY_ROUNDS}, FIRM - {b} > 0", _t(e), verdict(e, ">"))
        )
    for b in baselines:
        e = paired(gain[FIRM], gain[b])
        rows.append((f"reward gained per MB uploaded: FIRM - {b} > 0", _t(e, "{:+.5f}"), verdict(e, ">")))
    lines = ["## Claims", "", "| claim | measured: mean [95 % interval over seeds] | verdict |", "|---|---|---|"]
    lines += [f"| {c} | {m} | {_bold(v)} |" for c, m, v in rows]
    lines.append(
        f"\n{len(rows)} claims, each decided by its own 95 % interval, with no multiple-comparison correction: "
        f"were there no effect at all, about {0.025 * len(rows):.1f} of them would read **holds** by chance "
        "(and as many **does not hold**)."
    )
    return lines


def one_point_hypervolume(sweep: Sweep, hv: dict[str, Any], label: str) -> dict[int, float]:
    """seed -> the improvement hypervolume of the arm's one point nearest uniform p (a p-agnostic arm's only
    point), against that seed's reference: a front of D + 1 noisy points covers more volume than one point
    by their number alone, so a one-point arm is compared with FIRM's one point too."""
    out: dict[int, float] = {}
    for s, summary in (hv.get("by_seed") or {}).items():
        if not s.isdigit():  # "None": a one-seed sweep of an older firm, nothing to pair
            continue
        point = sweep.central(label, int(s))
        if point is not None and "scales" in summary:
            out[int(s)] = improvement_hypervolume([list(point.final)], summary["reference"], summary["scales"])
    return out


def stats_table(sweep: Sweep, hv: dict[str, Any], stats: dict[str, dict[str, dict[int, float]]]) -> list[str]:
    """Per arm: hypervolume, drift, oscillation, early worst change, upload per client per round, gain per MB."""
    lines = ["## Per-arm statistics (means over the arm's preferences, then over seeds)", ""]
    lines += ["| arm | hypervolume | drift.updates | oscillation | worst early change | upload / client / round | gain per MB |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for a in sweep.arms:
        formats = {"drift": "{:.4f}", "oscillation": "{:.4f}", "early": "{:+.4f}", "upload": "{:,.0f}", "gain": "{:+.5f}"}
        cells = [_t(hypervolume_estimate(hv, a), "{:.5f}"), *(_t(over(stats[k][a]), f) for k, f in formats.items())]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    if hv.get("unreferenced_seeds"):
        lines.append(
            f"\nSeeds {', '.join(hv['unreferenced_seeds'])}: the runs' base-model rewards differ by more than "
            "firm.pareto.BASE_TOLERANCE, so they have no fixed reference and are left out of the hypervolumes."
        )
    ref = hv.get("reference")
    if ref is not None:
        lines.append(
            f"\nHypervolume reference: the base model's held-out rewards {ref}, scales {hv.get('scales')} (reward units, "
            "the same for every arm and seed). Upload in bytes; MB = 10^6 bytes."
        )
    return lines


def firm_vs_fedavg(sweep: Sweep, names: list[str]) -> list[str]:
    """FIRM minus FedAvg at each shared preference, paired by seed (the fixed-point fact predicts 0 asymptotically)."""
    if "fedavg" not in sweep.arms:
        return []
    lines = ["## FIRM vs FedAvg at the same preference", ""]
    lines.append(
        "With the anchor at p and a constant reg, full-batch FIRM's fixed points are FedAvg(p)'s "
        '(docs/algorithms/firm.md, "Fixed points"): the two can differ only in their path and under noise.'
    )
    lines += ["", "| p | " + " | ".join(f"{n}: FIRM - FedAvg" for n in names) + " | differ? |", "|---" * (len(names) + 2) + "|"]
    for pref in sorted({p.preference for p in sweep.usable(FIRM)}, reverse=True):
        cells, differ = [], []
        for m in range(len(names)):
            a = {p.seed: p.final[m] for p in sweep.usable(FIRM) if p.preference == pref and p.seed is not None}
            b = {p.seed: p.final[m] for p in sweep.usable("fedavg") if p.preference == pref and p.seed is not None}
            e = paired(a, b)
            cells.append(_t(e))
            differ.append(verdict(e, ">") == "holds" or verdict(e, "<") == "holds")
        lines.append(f"| {_pref(pref)} | " + " | ".join(cells) + f" | {'yes' if any(differ) else 'no'} |")
    return lines


def references_section(out: Path, sweep: Sweep, names: list[str]) -> list[str]:
    runs: dict[str, list[Run]] = {}
    for path in sorted((out / "references").glob("*-s*")):
        try:
            run = load_run(path)
        except (ReportError, OSError):  # an unfinished reference is left out
            continue
        if run.summary.get("status") == "completed":
            runs.setdefault(path.name.rsplit("-s", 1)[0], []).append(run)
    if not runs:
        return []
    lines = [
        "## References at p = uniform",
        "",
        "| run | " + " | ".join(names) + " | upload bytes |",
        "|---" * (len(names) + 2) + "|",
    ]
    for label, rs in runs.items():
        cells = [_t(Estimate.of(r.final_eval[n] for r in rs), "{:.4f}") for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {rs[0].total_bytes[0]:,} |")
    central = [sweep.central(FIRM, s) for s in sweep.seeds]
    cells = [_t(Estimate.of(p.final[m] for p in central if p is not None), "{:.4f}") for m in range(len(names))]
    lines.append("| firm (federated) | " + " | ".join(cells) + " | - |")
    return lines


def run_hours(out: Path) -> float:
    """Hours: the sum of `wall_time_s` over the completed runs' summaries under `out/*/*/` (machine time,
    kept even when an invocation was cut short and never wrote its own wall time)."""
    total = 0.0
    for path in out.glob("*/*/summary.json"):
        summary = _read(path)
        if summary.get("status") == "completed":
            total += float(summary.get("wall_time_s") or 0.0)
    return total / 3600.0


def tuning_section(tuning: dict[str, Any]) -> list[str]:
    if not tuning:
        return ["## Learning rates", "", "Not tuned (quick profile): each grid's middle value."]
    lines = ["## Learning rates (chosen on the validation split)", "", f"Criterion: {tuning['criterion']}.", ""]
    lines += ["| algorithm | " + "lr: score | " * 1 + "chosen |", "|---|---|---|"]
    edges = []
    for label, scores in tuning["scores"].items():
        shown = ", ".join(f"{lr}: {s:+.4f}" for lr, s in scores.items())
        grid, chosen = sorted(float(lr) for lr in scores), float(tuning["chosen"][label])
        edge = len(grid) > 1 and chosen in (grid[0], grid[-1])
        if edge:
            edges.append(label)
        lines.append(f"| {label} | {shown} | {tuning['chosen'][label]}{' (grid edge)' if edge else ''} |")
    if edges:
        lines.append(
            f"\nChosen at an edge of its grid: {', '.join(edges)}. The best rate may lie beyond it; every algorithm "
            "had the same number of grid points and one tuning seed, and the grid was not widened afterwards."
        )
    return lines


def write_plots(sweep: Sweep, docs: Path) -> list[str]:
    out = docs / "results"
    out.mkdir(parents=True, exist_ok=True)
    lines = ["## Plots", ""]
    for name, key in PLOTS.items():
        if key not in COMPARISON_PLOTS:
            continue
        fig = COMPARISON_PLOTS[key](sweep)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=72, bbox_inches="tight")
        (out / f"{name}.png").write_bytes(buf.getvalue())
        lines.append(f"![{name}](results/{name}.png)")
        lines.append("")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=Path("runs/evidence"))
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    args = parser.parse_args()
    evidence = _read(args.out / "evidence.json")
    if not evidence:
        print(f"results: {args.out}/evidence.json missing: run benchmarks/evidence.py first", file=sys.stderr)
        return 2
    sweep = load_sweep(args.out / "sweep")
    names = sweep.objectives
    hv = runs_pareto(sweep) or {}  # from the runs, by this firm: not sweep.json's, which an older firm may have written
    stats = arm_statistics(sweep, names)
    quick = evidence.get("profile") == "quick"
    missing = sweep.missing
    machine = evidence.get("machine", {})
    head = [
        "# Results: FIRM vs its baselines on a real conflict (issue 17)",
        "",
        "Generated by `python benchmarks/results.py` from the run directories; do not edit by hand.",
        "",
    ]
    if quick:
        head += ["> **Quick profile: a pipeline check, not evidence.** Fewer seeds, preferences, arms and rounds than the "
                 "acceptance run (`python benchmarks/evidence.py`); its verdicts are what these few runs show.", ""]  # fmt: skip
    if missing:
        head += [f"> **Incomplete:** {len(missing)} planned runs have not finished: the figures use the others.", ""]
    head += [
        f"- **Command:** `{evidence.get('command')}` then `python benchmarks/results.py {args.out}`",
        f"- **Profile:** {evidence.get('profile')}: {json.dumps(evidence.get('settings'))}",
        f"- **Task:** `{evidence.get('task')}` (docs/tasks.md), objectives {', '.join(names)}",
        f"- **Machine:** {machine.get('cpu')}, {machine.get('cores')} cores; torch {machine.get('torch')}, Python {machine.get('python')}",
        f"- **Commit:** {machine.get('commit')}; started {evidence.get('started')}, finished {evidence.get('finished', 'not yet')}; "
        f"wall time {evidence.get('wall_time_s', float('nan')) / 60:.0f} min (the invocations that ran to their end)",
        f"- **Run time:** {run_hours(args.out):.1f} h, the sum of every completed run's own wall time (tuning, sweep, "
        "references; one compute thread each; with `--jobs 2` two run at once), whatever stopped the invocations",
        *(
            f"- **Invocation {k + 1}:** commit {inv['machine'].get('commit')}, {inv['machine'].get('cpu')}, "
            f"{inv['started']} to {inv['finished']}, {inv['wall_time_s'] / 60:.0f} min, {inv.get('jobs', 1)} worker(s)"
            for k, inv in enumerate(evidence.get("invocations") or [])
        ),
        f"- **Seeds:** {', '.join(str(s) for s in sweep.seeds)} (training seeds; data.seed fixed: paired evaluation)",
        f"- **Learning rates:** {json.dumps(evidence.get('learning_rates'))}",
        "",
        "Verdicts: **holds** when the 95 % interval over seeds lies on the claimed side of 0, **does not hold** when it "
        "lies on the other side or touches 0 from it, **inconclusive** otherwise, and when every seed gave the same value "
        "(no spread; the ordered trade-off then uses Spearman's exact null distribution) (firm/report/claims.py). "
        "Reward per MB is defined at the seeds where the arm's mean gain is positive.",
        "",
    ]
    body = [
        *claims_section(sweep, names, hv, stats), "",
        *budget_section(sweep, names), "",
        *arm_table(sweep, names), "",
        *stats_table(sweep, hv, stats), "",
        *firm_vs_fedavg(sweep, names), "",
        *references_section(args.out, sweep, names), "",
        *tuning_section(_read(args.out / "tuning.json")), "",
        *write_plots(sweep, args.docs),
        f"_Page written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._",
    ]  # fmt: skip
    (args.docs / "results.md").write_text("\n".join(head + body) + "\n", encoding="utf-8")
    print(f"wrote {args.docs / 'results.md'} and {args.docs / 'results'}/*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
