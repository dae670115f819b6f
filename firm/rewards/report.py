"""What a reward-learning run reports: summary.json, alignment.png and report.md in its run directory.

The figures are PluralLLM's: the alignment score (1 - Jensen-Shannon distance of predicted and true
rating distributions, firm.rewards.metrics) per group, its mean, worst group and spread, on seen
groups' held-out items and on unseen groups; and convergence speed: the first round (and samples
trained on) at which the seen groups' mean alignment reaches `train.target_alignment`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from firm.atomic import write_atomic
from firm.rewards.config import RewardConfig


def reached(rows: Sequence[dict[str, Any]], target: float) -> dict[str, int] | None:
    """The first evaluated round whose seen mean alignment is >= target: {round, samples}; None if never (or target 0)."""
    if target <= 0:
        return None
    for row in rows:
        seen = row.get("seen") or {}
        if seen and seen["mean"] >= target:
            return {"round": int(row["round"]), "samples": int(row["samples"])}
    return None


def summarise(config: RewardConfig, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    evaluated = [r for r in rows if r.get("seen")]
    if not evaluated:
        raise ValueError("no evaluated round in metrics.jsonl")
    first, last = evaluated[0], evaluated[-1]
    best = max(evaluated, key=lambda r: r["seen"]["mean"])
    return {
        "mode": config.train.mode,
        "model": config.model.kind,
        "server": config.train.server if config.train.mode == "federated" else None,
        "rounds": int(last["round"]),
        "samples": int(last["samples"]),
        "initial": {"seen": first["seen"], "unseen": first.get("unseen", {})},
        "final": {"seen": last["seen"], "unseen": last.get("unseen", {})},
        "best_seen_mean": {"round": int(best["round"]), "value": best["seen"]["mean"]},
        "target_alignment": config.train.target_alignment,
        "reached_target": reached(evaluated, config.train.target_alignment),
    }


def _plot(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = [r for r in rows if r.get("seen")]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for part, colour in (("seen", "tab:blue"), ("unseen", "tab:orange")):
        pts = [(r["round"], r[part]["mean"], r[part]["worst"]) for r in evaluated if r.get(part)]
        if not pts:
            continue
        x, mean, worst = zip(*pts, strict=True)
        ax.plot(x, mean, color=colour, label=f"{part} groups: mean")
        ax.plot(x, worst, color=colour, linestyle="--", label=f"{part} groups: worst")
    ax.set_xlabel("round")
    ax.set_ylabel("alignment score (1 - JS distance)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(run_dir: Path, config: RewardConfig, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """summary.json, alignment.png and report.md; returns the summary."""
    summary = summarise(config, rows)
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    _plot(run_dir / "alignment.png", rows)
    lines = [
        f"# Reward learning: {summary['mode']} {summary['model']}" + (f" ({summary['server']})" if summary["server"] else ""),
        "",
        f"{summary['rounds']} rounds, {summary['samples']} items trained on. Alignment score = 1 - JS distance of the",
        "predicted and true rating distributions per (group, question), averaged over questions (firm.rewards.metrics).",
        "",
        "| groups | when | mean | worst | spread (sd) | gap | MAE |",
        "|---|---|---|---|---|---|---|",
    ]
    for when in ("initial", "final"):
        for part in ("seen", "unseen"):
            f = summary[when][part]
            if f:
                lines.append(
                    f"| {part} ({f['groups']}) | {when} | {f['mean']:.4f} | {f['worst']:.4f} | {f['spread']:.4f} | {f['gap']:.4f} | {f['mae']:.3f} |"
                )
    if summary["reached_target"]:
        r = summary["reached_target"]
        lines += ["", f"Reached seen mean alignment {summary['target_alignment']} at round {r['round']} ({r['samples']} items)."]
    lines += ["", "![alignment](alignment.png)", ""]
    write_atomic(run_dir / "report.md", "\n".join(lines))
    return summary
