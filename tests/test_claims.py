"""FIRM's claims (firm/report/claims.py) against numbers derived by hand, and benchmarks/results.py's page
from a hand-made evidence directory: verdicts, per-run statistics, per-seed pairing, the claims table."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from firm.pareto import seeded_pareto
from firm.report.claims import (
    eval_curve,
    gain_per_mb,
    mean_drift,
    mean_gain,
    oscillation,
    over,
    paired,
    paired_separation,
    per_seed,
    spearman_null_tail,
    spearman_tradeoff,
    tradeoff_by_seed,
    tradeoff_verdict,
    upload_mb,
    upload_per_client_round,
    verdict,
    worst_early_change,
)
from firm.report.load import Run, Sweep, SweepPoint
from firm.report.seeds import Estimate

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["a", "b"]
T_975_1 = 12.706204736174707  # Student t quantile, 0.975, 1 degree of freedom (tables: 12.706)
T_975_2 = 4.302652729911275  # 2 degrees of freedom (tables: 4.303)
NAN = math.nan


# --------------------------------------------------------------------------- verdict


@pytest.mark.parametrize(
    ("estimate", "greater", "less"),
    [
        (Estimate(0.5, 0.1, 0.9, 3), "holds", "does not hold"),  # entirely above 0
        (Estimate(-0.5, -0.9, -0.1, 3), "does not hold", "holds"),  # entirely below 0
        (Estimate(0.1, -0.2, 0.4, 3), "inconclusive", "inconclusive"),  # contains 0
        (Estimate(0.5, 0.0, 1.0, 3), "inconclusive", "does not hold"),  # touches 0 from above: "> 0" not shown
        (Estimate(-0.5, -1.0, 0.0, 3), "does not hold", "inconclusive"),  # touches 0 from below
        (Estimate(0.0, 0.0, 0.0, 3), "does not hold", "does not hold"),  # exactly 0 at every seed: neither side
        (Estimate(5.0, NAN, NAN, 1), "inconclusive", "inconclusive"),  # one seed: no interval
        (Estimate(NAN, NAN, NAN, 0), "inconclusive", "inconclusive"),  # no seed
        (Estimate(0.5, NAN, NAN, 2), "inconclusive", "inconclusive"),  # no finite interval
        (Estimate(0.5, 0.5, 0.5, 2), "inconclusive", "inconclusive"),  # every seed the same: no spread, no evidence
    ],
)
def test_verdict_reads_the_interval(estimate: Estimate, greater: str, less: str) -> None:
    assert verdict(estimate, ">") == greater
    assert verdict(estimate, "<") == less


def test_verdict_of_an_interval_over_seeds_by_hand() -> None:
    # [0.19, 0.20, 0.21]: mean 0.2, sd 0.01, half t_{0.975, 2} * 0.01 / sqrt(3) = 0.02484 -> [0.1752, 0.2248]
    tight = Estimate.of([0.19, 0.20, 0.21])
    assert tight.low == pytest.approx(0.2 - T_975_2 * 0.01 / math.sqrt(3)) == pytest.approx(0.17516, abs=1e-5)
    assert verdict(tight, ">") == "holds" and verdict(tight, "<") == "does not hold"
    # [0.1, 0.2, 0.3]: sd 0.1, half 0.2484 -> [-0.0484, 0.4484]: the same mean, but it contains 0
    wide = Estimate.of([0.1, 0.2, 0.3])
    assert wide.low == pytest.approx(0.2 - T_975_2 * 0.1 / math.sqrt(3)) == pytest.approx(-0.04841, abs=1e-5)
    assert verdict(wide, ">") == verdict(wide, "<") == "inconclusive"


# --------------------------------------------------------------------------- per-run statistics on curves


def test_oscillation_is_total_variation_minus_net_change() -> None:
    assert oscillation([[0.0, 0.0], [0.5, 1.0], [1.0, 1.0]]) == 0.0  # monotone (non-decreasing) on both
    assert oscillation([[1.0], [0.5], [0.0]]) == 0.0  # monotone decreasing: no back-and-forth either
    # TV |1 - 0| + |0.5 - 1| = 1.5, net |0.5 - 0| = 0.5 -> 1.0; the second objective is flat
    assert oscillation([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]]) == pytest.approx(1.0)
    # each objective goes there and back: TV 2, net 0 -> 2 + 2 = 4, summed over objectives
    assert oscillation([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]) == pytest.approx(4.0)
    # 0 -> 0.3 -> 0.1 -> 0.4: TV 0.3 + 0.2 + 0.3 = 0.8, net 0.4 -> 0.4
    assert oscillation([[0.0], [0.3], [0.1], [0.4]]) == pytest.approx(0.4)
    assert oscillation([[0.2, 0.7]]) == 0.0  # the base model alone: no change at all
    assert oscillation([]) == 0.0


def test_worst_early_change_by_hand() -> None:
    curve = [[0.0, 0.0], [0.2, -0.1], [0.3, 0.1], [0.5, 0.4]]  # rounds 0..3
    assert worst_early_change(curve, 1) == pytest.approx(-0.1)  # min(0.2, -0.1): b was given up at round 1
    assert worst_early_change(curve, 2) == pytest.approx(0.1)  # min(0.3, 0.1)
    assert worst_early_change(curve, 10) == pytest.approx(0.4)  # E beyond the curve: its last round, min(0.5, 0.4)
    assert worst_early_change([[0.3, 0.6], [0.2, 0.9]], 2) == pytest.approx(-0.1)


def test_spearman_tradeoff_by_hand() -> None:
    prefs = [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]
    ordered = [(0.7, 0.5), (0.6, 0.6), (0.5, 0.7)]  # more weight on an objective, more of it
    assert spearman_tradeoff(prefs, ordered, 0) == pytest.approx(1.0)
    assert spearman_tradeoff(prefs, ordered, 1) == pytest.approx(1.0)
    reversed_ = [(0.5, 0.7), (0.6, 0.6), (0.7, 0.5)]
    assert spearman_tradeoff(prefs, reversed_, 0) == pytest.approx(-1.0)
    assert spearman_tradeoff(prefs, reversed_, 1) == pytest.approx(-1.0)
    # 4 points: p_a = 0.75, 0.5, 0.25, 1.0 -> ranks 3, 2, 1, 4; r_a = 0.6, 0.7, 0.5, 0.8 -> ranks 2, 3, 1, 4;
    # rank differences 1, -1, 0, 0: rho = 1 - 6 * (1 + 1) / (4 * (16 - 1)) = 0.8
    four_p = [(0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (1.0, 0.0)]
    four_r = [(0.6, 0.0), (0.7, 0.0), (0.5, 0.0), (0.8, 0.0)]
    assert spearman_tradeoff(four_p, four_r, 0) == pytest.approx(0.8)
    assert math.isnan(spearman_tradeoff(prefs[:2], ordered[:2], 0))  # fewer than 3 points
    assert spearman_tradeoff(prefs, [(0.6, 0.5), (0.6, 0.6), (0.6, 0.7)], 0) == 0.0  # constant reward: no ordering
    assert math.isnan(spearman_tradeoff([(0.5, 0.5)] * 3, ordered, 0))  # constant preference
    assert spearman_tradeoff(four_p, four_r, 1) == 0.0  # r_b constant: counted as no ordering, not dropped


def test_paired_separation_by_hand() -> None:
    pa = [[1.0, 0.0], [2.0, 1.0], [4.0, 1.0]]  # [P = 3, M = 2] per-prompt means of run a
    pb = [[0.0, 0.0], [1.0, 0.0], [1.0, 3.0]]
    # d = [[1, 0], [1, 1], [3, -2]]
    # a: mean 5/3; deviations -2/3, -2/3, 4/3; sd^2 = (4 + 4 + 16) / 9 / 2 = 4/3; se = sqrt(4/3) / sqrt(3) = 2/3
    # b: mean -1/3; deviations 1/3, 4/3, -5/3; sd^2 = (1 + 16 + 25) / 9 / 2 = 7/3; se = sqrt(7/3) / sqrt(3) = sqrt(7) / 3
    run_a = Run(Path("a"), metrics=[], summary={"final_eval_prompt_means": pa})
    run_b = Run(Path("b"), metrics=[], summary={"final_eval_prompt_means": pb})
    sep = paired_separation(run_a, run_b, NAMES)
    assert sep["a"] == pytest.approx((5 / 3, 2 / 3))
    assert sep["b"] == pytest.approx((-1 / 3, math.sqrt(7) / 3))
    flipped = paired_separation(run_b, run_a, NAMES)
    assert flipped["a"] == pytest.approx((-5 / 3, 2 / 3))  # the same standard error, the sign of the difference
    # without paired per-prompt figures: nothing
    assert paired_separation(run_a, Run(Path("c"), metrics=[]), NAMES) == {}
    assert paired_separation(run_a, Run(Path("c"), metrics=[], summary={"final_eval_prompt_means": pb[:2]}), NAMES) == {}
    one = Run(Path("d"), metrics=[], summary={"final_eval_prompt_means": pa[:1]})
    assert paired_separation(one, one, NAMES) == {}  # one prompt: no standard error


# --------------------------------------------------------------------------- per-run statistics on a Run


def _eval_row(
    round_idx: int, evals: dict[str, Any] | None, upload: int | None = 1000, clients: int = 2, drift: Any = 0.1
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "round": round_idx,
        "clients": list(range(clients)),
        "eval": evals,
        "drift": {"weights": 0.0, "updates": drift},
    }
    if upload is not None:
        row["comm"] = {"upload_bytes": upload, "download_bytes": 2 * upload}
    return row


def test_eval_curve_is_the_base_then_every_evaluated_round() -> None:
    run = Run(
        Path("r"),
        metrics=[
            _eval_row(1, None),  # eval.every > 1: a round without evaluation
            _eval_row(2, {"a": 0.6, "b": 0.4}),
            _eval_row(3, {"a": 0.65}),  # an objective missing: left out
            _eval_row(4, {"a": 0.7, "b": 0.45}),
        ],
        summary={"initial_eval": {"a": 0.5, "b": 0.5}},
    )
    assert eval_curve(run, NAMES) == [[0.5, 0.5], [0.6, 0.4], [0.7, 0.45]]
    assert eval_curve(run, ["b", "a"]) == [[0.5, 0.5], [0.4, 0.6], [0.45, 0.7]]  # columns in the order asked
    # TV of a: 0.1 + 0.1, net 0.2 -> 0; of b: 0.1 + 0.05, net 0.05 -> 0.1
    assert oscillation(eval_curve(run, NAMES)) == pytest.approx(0.1)
    assert worst_early_change(eval_curve(run, NAMES), 1) == pytest.approx(-0.1)


def test_gain_per_mb_by_hand() -> None:
    summary = {
        "initial_eval": {"a": 0.5, "b": 0.5},
        "final_eval": {"a": 0.7, "b": 0.6},
        "total_upload_bytes": 2_000_000,
        "total_download_bytes": 4_000_000,
    }
    run = Run(Path("r"), metrics=[_eval_row(1, {"a": 0.0, "b": 0.0}, upload=5)], summary=summary)
    # mean gain (0.2 + 0.1) / 2 = 0.15 over 2 MB uploaded (summary's totals, not the rows')
    assert mean_gain(run, NAMES) == pytest.approx(0.15) and upload_mb(run) == pytest.approx(2.0)
    assert mean_gain(run, ["a"]) == pytest.approx(0.2)
    # a run in progress: no totals or final_eval in summary.json -> the rows' uploads and last evaluated round
    rows = [
        _eval_row(1, {"a": 0.6, "b": 0.5}, upload=250_000),
        _eval_row(2, {"a": 0.4, "b": 0.7}, upload=250_000),
        _eval_row(3, None, upload=500_000),
    ]
    running = Run(Path("r"), metrics=rows, summary={"initial_eval": {"a": 0.5, "b": 0.5}})
    assert mean_gain(running, NAMES) == pytest.approx(0.05) and upload_mb(running) == pytest.approx(1.0)
    silent = Run(Path("r"), metrics=[], summary={**summary, "total_upload_bytes": 0})
    assert math.isnan(upload_mb(silent))  # nothing uploaded (a reference run): no ratio
    # per seed: 0.15 / 2 MB = 0.075; seed 1 lost reward (-0.002 over 8 MB would read -0.00025, "better" than
    # -0.002 over 2 MB): no ratio; seed 2 has no upload figure
    assert gain_per_mb({0: 0.15, 1: -0.002, 2: 0.1}, {0: 2.0, 1: 8.0}) == pytest.approx({0: 0.075})


def test_upload_per_client_round_by_hand() -> None:
    rows = [
        _eval_row(1, None, upload=1000, clients=2),  # 500 per client
        _eval_row(2, None, upload=1000, clients=4),  # 250 per client
        _eval_row(3, None, upload=1000, clients=0),  # every client dropped: no per-client figure
        _eval_row(4, None, upload=None, clients=2),  # no comm record
    ]
    assert upload_per_client_round(Run(Path("r"), metrics=rows)) == pytest.approx(375.0)  # (500 + 250) / 2
    assert math.isnan(upload_per_client_round(Run(Path("r"), metrics=rows[2:])))


def test_mean_drift_over_the_rounds_that_report_it() -> None:
    rows = [
        _eval_row(1, None, drift=0.2),
        _eval_row(2, None, drift=0.4),
        _eval_row(3, None, drift=None),
        {"round": 4, "drift": None},
    ]
    run = Run(Path("r"), metrics=rows)
    assert mean_drift(run) == pytest.approx(0.3)  # (0.2 + 0.4) / 2; rounds 3 and 4 report none
    assert mean_drift(run, "weights") == pytest.approx(0.0)  # 0 on rounds 1-3
    assert math.isnan(mean_drift(Run(Path("r"), metrics=rows[2:])))


# --------------------------------------------------------------------------- per seed, paired by seed


def _point(
    label: str,
    seed: int | None,
    pref: tuple[float, ...],
    run: Run | None,
    final: tuple[float, ...] = (0.0, 0.0),
    skipped: str | None = None,
) -> SweepPoint:
    return SweepPoint(
        label=label, algorithm=label, preference=pref, run_dir=f"{label}-{pref}-s{seed}", record={}, seed=seed,
        run=None if skipped else run, final=() if skipped else final, skipped=skipped,
    )  # fmt: skip


def _drift_run(drift: float | None) -> Run:
    return Run(Path("r"), metrics=[_eval_row(1, None, drift=drift)])


def test_per_seed_averages_an_arms_usable_points_at_each_seed() -> None:
    p, q = (1.0, 0.0), (0.0, 1.0)
    points = [
        _point("firm", 0, p, _drift_run(0.1)),
        _point("firm", 0, q, _drift_run(0.3)),
        _point("firm", 0, (0.5, 0.5), _drift_run(9.0), skipped="status failed"),  # left out of the figures
        _point("firm", 1, p, _drift_run(0.5)),
        _point("firm", 1, q, _drift_run(None)),  # no drift: nan, left out of the seed's mean
        _point("firm", 2, p, _drift_run(None)),  # no finite value at all: the seed is left out
        _point("fedavg", 0, p, _drift_run(7.0)),  # another arm
        _point("firm", None, p, _drift_run(8.0)),  # a hand-made point without a seed
    ]
    sweep = Sweep(Path("sw"), data={"seeds": [0, 1, 2]}, objectives=NAMES, points=points)
    assert per_seed(sweep, "firm", mean_drift) == pytest.approx({0: 0.2, 1: 0.5})
    assert per_seed(sweep, "fedavg", mean_drift) == {0: 7.0}
    assert per_seed(sweep, "mgda", mean_drift) == {}


def test_tradeoff_by_seed_ranks_each_seeds_preference_points() -> None:
    prefs = [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]
    ordered = [(0.7, 0.5), (0.6, 0.6), (0.5, 0.7)]
    points = [_point("firm", 0, pf, Run(Path("r"), metrics=[]), final=fn) for pf, fn in zip(prefs, ordered, strict=True)]
    # seed 1: a's reward falls as its weight rises, b's is ordered; listed out of grid order
    seed1 = [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0)]
    finals1 = [(0.6, 0.6), (0.5, 0.5), (0.7, 0.7)]
    points += [_point("firm", 1, pf, Run(Path("r"), metrics=[]), final=fn) for pf, fn in zip(seed1, finals1, strict=True)]
    points += [_point("firm", 2, pf, Run(Path("r"), metrics=[]), final=fn) for pf, fn in zip(prefs[:2], ordered[:2], strict=True)]
    sweep = Sweep(Path("sw"), data={"seeds": [0, 1, 2]}, objectives=NAMES, points=points)
    assert tradeoff_by_seed(sweep, "firm", 0) == pytest.approx({0: 1.0, 1: -1.0})  # seed 2: 2 points, no rho
    assert tradeoff_by_seed(sweep, "firm", 1) == pytest.approx({0: 1.0, 1: 1.0})
    # over seeds: rho = 1 at both seeds is a zero-width interval at 1
    both = over(tradeoff_by_seed(sweep, "firm", 1))
    assert (both.mean, both.low, both.high, both.n) == pytest.approx((1.0, 1.0, 1.0, 2))
    assert verdict(both, ">") == "inconclusive"  # no spread: the t interval says nothing
    # the exact rule: two seeds at rho = 1 over 3 points happen by chance with (1/6)^2 = 0.028 > 0.025
    assert tradeoff_verdict(tradeoff_by_seed(sweep, "firm", 1), 3)[1] == "inconclusive"


def test_spearman_null_tail_by_hand() -> None:
    # the 6 rankings of 3 points give rho 1, 0.5, 0.5, -0.5, -0.5, -1
    assert spearman_null_tail(1.0, 3) == pytest.approx(1 / 6)
    assert spearman_null_tail(0.5, 3) == pytest.approx(3 / 6)
    assert spearman_null_tail(-1.0, 3) == 1.0
    assert spearman_null_tail(1.0, 5) == pytest.approx(1 / 120)
    assert spearman_null_tail(0.9, 5) == pytest.approx(5 / 120)  # rho = 1 and the 4 adjacent swaps (rho = 0.9)
    with pytest.raises(ValueError, match="3 to 8"):
        spearman_null_tail(1.0, 2)


@pytest.mark.parametrize(
    ("rhos", "points", "expected"),
    [
        ({0: 1.0, 1: 1.0, 2: 1.0}, 3, "holds"),  # (1/6)^3 = 0.0046
        ({0: 0.5, 1: 0.5}, 3, "inconclusive"),  # (1/2)^2 = 0.25: the reviewer's case, once "holds"
        ({0: 1.0, 1: 1.0, 2: 1.0}, 5, "holds"),  # (1/120)^3
        ({0: -1.0, 1: -1.0, 2: -1.0}, 5, "does not hold"),  # an inverted trade-off at every seed
        ({0: 0.9, 1: 0.7, 2: 1.0}, 5, "holds"),  # spread: the t interval, [0.49, 1.0] after clipping
        ({0: 0.5, 1: -0.5, 2: 0.5}, 3, "inconclusive"),
    ],
)
def test_tradeoff_verdict(rhos: dict[int, float], points: int, expected: str) -> None:
    assert tradeoff_verdict(rhos, points)[1] == expected


def test_paired_differences_pair_by_seed_and_leave_out_unmatched_seeds() -> None:
    a = {0: 1.0, 1: 2.0, 2: 4.0}  # seed 2 only in a
    b = {0: 0.5, 1: 1.0, 3: 9.0}  # seed 3 only in b
    # seed 0: 0.5, seed 1: 1.0 -> mean 0.75, sd sqrt(0.125) = 0.35355, half t_{0.975, 1} * 0.35355 / sqrt(2) = 12.7062 * 0.25
    e = paired(a, b)
    assert (e.mean, e.n) == (pytest.approx(0.75), 2)
    assert e.half == pytest.approx(T_975_1 * 0.25) == pytest.approx(3.17655, abs=1e-5)
    assert verdict(e, ">") == "inconclusive"  # [-2.43, 3.93]: two seeds rarely decide anything
    assert paired(b, a).mean == pytest.approx(-0.75)
    assert paired(a, {7: 1.0}).n == 0 and math.isnan(paired(a, {}).mean)
    assert over(a) == Estimate.of([1.0, 2.0, 4.0]) == over([1.0, 2.0, 4.0])


# --------------------------------------------------------------------------- benchmarks/results.py on a hand-made evidence directory

BASE = {"a": 0.5, "b": 0.5}
PREFS = [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]
SEEDS = [0, 1, 2]
PROMPT_NOISE = [1.0, -1.0, 1.0, -1.0]  # P = 4 held-out prompts


def _curve(change: tuple[float, float], dip: float = 0.0) -> list[list[float]]:
    """Rounds 0..3: the base, then a third of the change per round; `dip` subtracted from both at round 1."""
    return [[BASE[n] + change[m] * t / 3 - (dip if t == 1 else 0.0) for m, n in enumerate(NAMES)] for t in range(4)]


def _write_run(
    path: Path, pref: tuple[float, ...], curve: list[list[float]], upload: int, drift: float, noise: float
) -> dict[str, float]:
    path.mkdir(parents=True)
    rows = [_eval_row(t, dict(zip(NAMES, r, strict=True)), upload=upload, drift=drift) for t, r in enumerate(curve[1:], start=1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    final = dict(zip(NAMES, curve[-1], strict=True))
    summary = {
        "status": "completed",
        "objectives": NAMES,
        "preference": list(pref),
        "initial_eval": BASE,
        "final_eval": final,
        "initial_eval_prompt_means": [[BASE[n] for n in NAMES] for _ in PROMPT_NOISE],
        "final_eval_prompt_means": [[final[n] + noise * z for n in NAMES] for z in PROMPT_NOISE],
        "total_upload_bytes": upload * len(rows),
        "total_download_bytes": 2 * upload * len(rows),
        "wall_time_s": 360.0,
    }
    (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return final


def _evidence_dir(root: Path) -> Path:
    """firm, fedavg (3 preferences) and mgda (ignores p) at seeds 0-2, 3 rounds each; every figure designed (e = 0.01 s):

    firm    change (0.2 p_a + e, 0.2 p_b + e), monotone; 2 MB uploaded per round; drift 0.1
    fedavg  change (0.1 p_a, 0.1 p_b), dipping by 0.05 + e / 2 on both at round 1; 0.5 MB per round; drift 0.2 + e
    mgda    change (0.05, 0.05), monotone; 2 MB per round; drift 0.1 + (0.05, -0.05, 0.01)[s]
    """
    sweep_dir = root / "sweep"
    points: list[dict[str, Any]] = []
    finals: dict[str, dict[int, list[list[float]]]] = {"firm": {}, "fedavg": {}, "mgda": {}}
    for s in SEEDS:
        e = 0.01 * s
        arms: list[tuple[str, int | None, tuple[float, float], list[list[float]], int, float]] = [
            ("firm", i, pref, _curve((0.2 * pref[0] + e, 0.2 * pref[1] + e)), 2_000_000, 0.1) for i, pref in enumerate(PREFS)
        ]
        arms += [
            ("fedavg", i, pref, _curve((0.1 * pref[0], 0.1 * pref[1]), dip=0.05 + e / 2), 500_000, 0.2 + e)
            for i, pref in enumerate(PREFS)
        ]
        arms += [("mgda", None, (0.5, 0.5), _curve((0.05, 0.05)), 2_000_000, 0.1 + (0.05, -0.05, 0.01)[s])]
        for label, i, pref, curve, upload, drift in arms:
            name = f"{label}-s{s}" if i is None else f"{label}-p{i:02d}-s{s}"
            final = _write_run(sweep_dir / name, pref, curve, upload, drift, noise=0.001 * (1 + (i or 0)))
            finals[label].setdefault(s, []).append([final[n] for n in NAMES])
            points.append({
                "label": label, "algorithm": label, "preference": list(pref), "uses_preference": i is not None, "seed": s,
                "run_dir": name, "status": "completed", "initial_eval": BASE, "final_eval": final,
            })  # fmt: skip
    data = {
        "objectives": NAMES,
        "seeds": SEEDS,
        "key": {"arms": [{"label": a} for a in finals]},
        "points": points,
        "expected": [{"label": p["label"], "run_dir": p["run_dir"]} for p in points],
        "pareto": seeded_pareto(finals, {s: [BASE[n] for n in NAMES] for s in SEEDS}),
    }
    (sweep_dir / "sweep.json").write_text(json.dumps(data), encoding="utf-8")
    evidence = {
        "command": "benchmarks/evidence.py --out x",
        "profile": "full",
        "settings": {"seeds": SEEDS},
        "task": "helpful-vs-concise",
        "started": "2025-01-01 00:00:00 UTC",
        "finished": "2025-01-01 01:00:00 UTC",
        "wall_time_s": 3600.0,
        "machine": {"cpu": "test cpu", "cores": 2, "torch": "x", "python": "3.11", "commit": "abc"},
        "learning_rates": {"firm": 0.01},
    }
    (root / "evidence.json").write_text(json.dumps(evidence), encoding="utf-8")
    tuning = {
        "criterion": "validation gain",
        "scores": {
            "firm": {"0.002": 0.01, "0.005": 0.08, "0.0125": 0.0},
            "fedavg": {"0.002": 0.0, "0.005": 0.01, "0.0125": 0.02},
        },
        "chosen": {"firm": 0.005, "fedavg": 0.0125},
    }
    (root / "tuning.json").write_text(json.dumps(tuning), encoding="utf-8")
    return root


def _results_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_results", ROOT / "benchmarks" / "results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _claims(page: str) -> dict[str, tuple[str, str]]:
    """claim -> (measured, verdict) of the page's claims table."""
    lines = page.split("## Claims", 1)[1].split("\n## ", 1)[0].splitlines()
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in lines
        if line.startswith("| ") and not line.startswith("| claim")
    ]
    return {claim: (measured, v.strip("*")) for claim, measured, v in rows}


def test_results_page_from_a_hand_made_evidence_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _evidence_dir(tmp_path / "evidence")
    docs = tmp_path / "docs"
    docs.mkdir()
    results = _results_module()
    monkeypatch.setattr(sys, "argv", ["results.py", str(out), "--docs", str(docs)])
    assert results.main() == 0
    page = (docs / "results.md").read_text(encoding="utf-8")
    assert "| claim | measured: mean [95 % interval over seeds] | verdict |" in page
    assert "Quick profile" not in page and "Incomplete" not in page
    claims = _claims(page)
    verdicts = {claim: v for claim, (_, v) in claims.items()}
    assert verdicts == {
        # rho = 1 at every seed for both arms that read p; mgda ignores p: no row
        "ordered trade-off, firm: Spearman(p_a, final a) > 0": "holds",
        "ordered trade-off, firm: Spearman(p_b, final b) > 0": "holds",
        "ordered trade-off, fedavg: Spearman(p_a, final a) > 0": "holds",
        "ordered trade-off, fedavg: Spearman(p_b, final b) > 0": "holds",
        # firm's points dominate fedavg's (twice the gain) and mgda's (0.05, 0.05) at every seed
        "hypervolume: FIRM - fedavg > 0": "holds",
        "hypervolume: FIRM - mgda > 0": "holds",
        # FIRM's point at p = (.5, .5): ((0.1 + e)^2) against mgda's 0.05^2
        "hypervolume, one point each (FIRM at p nearest uniform): FIRM - mgda > 0": "holds",
        # 0.1 - (0.1 + (0.05, -0.05, 0.01)): -0.05, 0.05, -0.01 -> contains 0
        "drift.updates (mean over rounds): FIRM - mgda < 0": "inconclusive",
        # 0.1 - (0.2 + e) = -0.10, -0.11, -0.12
        "drift.updates (mean over rounds): FIRM - fedavg < 0": "holds",
        # firm and mgda are monotone (0), fedavg dips (> 0 at every seed)
        "smoothness: oscillation FIRM - fedavg < 0": "holds",
        "smoothness: oscillation FIRM - mgda < 0": "does not hold",  # exactly 0 at every seed
        # E = 2: firm mean over p of min_m 2/3 change = 2/3 (0.1/3 + e); fedavg's 2/3 * 0.1/3 (its dip is over); mgda 2/3 * 0.05
        "common descent: worst objective's change over rounds 0-2, FIRM - fedavg > 0": "holds",
        "common descent: worst objective's change over rounds 0-2, FIRM - mgda > 0": "inconclusive",  # -0.011, -0.004, +0.002
        # firm (0.1 + e) / 6 MB vs fedavg 0.05 / 1.5 MB and mgda 0.05 / 6 MB
        "reward gained per MB uploaded: FIRM - fedavg > 0": "does not hold",
        "reward gained per MB uploaded: FIRM - mgda > 0": "holds",
    }
    # the measured cell of one row by hand: -0.10, -0.11, -0.12: mean -0.11, sd 0.01, half 4.3027 * 0.01 / sqrt(3) = 0.02484
    half = T_975_2 * 0.01 / math.sqrt(3)
    assert (
        claims["drift.updates (mean over rounds): FIRM - fedavg < 0"][0]
        == f"{-0.11:+.4f} [{-0.11 - half:+.4f}, {-0.11 + half:+.4f}]"
    )
    # gain per MB, FIRM - fedavg: (0.1 + e) / 6 - 0.05 / 1.5 = -1/60 + e / 6
    gains = [(0.1 + 0.01 * s) / 6 - 0.05 / 1.5 for s in SEEDS]
    e = Estimate.of(gains)
    assert claims["reward gained per MB uploaded: FIRM - fedavg > 0"][0] == f"{e.mean:+.5f} [{e.low:+.5f}, {e.high:+.5f}]"
    # FedAvg's extreme preferences differ by 0.1 on each objective over a paired SE of about 0.001: adequate
    assert "**The budget separates FedAvg's extreme preferences at every seed.**" in page
    assert "## FIRM vs FedAvg at the same preference" in page
    assert "| fedavg | 0.002: +0.0000, 0.005: +0.0100, 0.0125: +0.0200 | 0.0125 (grid edge) |" in page
    assert "| firm | 0.002: +0.0100, 0.005: +0.0800, 0.0125: +0.0000 | 0.005 |" in page
    assert "Chosen at an edge of its grid: fedavg." in page
    assert "- **Run time:** 2.1 h, the sum of every completed run's own wall time" in page  # 21 runs x 6 min
    for name in ("front", "rewards", "drift"):
        assert (docs / "results" / f"{name}.png").stat().st_size > 1000


def _separation_sweep(d_a: float, d_b: float) -> Sweep:
    """FedAvg at p = (1, 0) and (0, 1), one seed: the first minus the second is (d_a, d_b) on every one of
    4 prompts but for a +-0.001 jitter (paired SE 0.001 / sqrt(4) * 2 / sqrt(3) ~ 0.00058)."""
    jitter = [0.001, -0.001, 0.001, -0.001]
    runs = {
        (1.0, 0.0): [[0.5 + d_a + j, 0.5 + d_b] for j in jitter],
        (0.0, 1.0): [[0.5, 0.5 + j] for j in jitter],
    }
    points = [
        _point("fedavg", 0, pref, Run(Path("r"), metrics=[], summary={"final_eval_prompt_means": means}))
        for pref, means in runs.items()
    ]
    return Sweep(Path("sw"), data={"seeds": [0]}, objectives=NAMES, points=points)


def test_the_budget_check_asks_each_extreme_to_win_its_own_objective() -> None:
    results = _results_module()
    adequate = "\n".join(results.budget_section(_separation_sweep(0.05, -0.04), NAMES))
    assert "| yes |" in adequate and "at every seed" in adequate
    # the reviewer's example: |d| > 3 SE on both, but p = (1, 0) lost on a and won on b: an inverted trade-off
    inverted = "\n".join(results.budget_section(_separation_sweep(-0.05, 0.04), NAMES))
    assert "| no |" in inverted and "The budget is too small" in inverted
    three = results.budget_section(_separation_sweep(0.05, -0.04), ["a", "b", "c"])
    assert "defined for two objectives" in three[-1]


def test_an_older_one_seed_sweeps_hypervolume_gives_no_paired_row_and_no_error() -> None:
    results = _results_module()
    firm = _point("firm", None, (1.0, 0.0), Run(Path("r"), metrics=[]))
    mgda = dataclasses.replace(_point("mgda", None, (0.5, 0.5), Run(Path("r"), metrics=[])), uses_preference=False)
    points = [firm, mgda]
    sweep = Sweep(Path("sw"), data={"seeds": []}, objectives=NAMES, points=points)
    hv = {"by_seed": {"None": {"hypervolume": {"firm": 0.1, "mgda": 0.0}, "reference": [0.5, 0.5], "scales": [1.0, 1.0]}}}
    stats: dict[str, dict[str, dict[int, float]]] = {
        k: {"firm": {}, "mgda": {}} for k in ("drift", "oscillation", "early", "gain")
    }
    table = "\n".join(results.claims_section(sweep, NAMES, hv, stats))
    assert "| hypervolume: FIRM - mgda > 0 | n/a | **inconclusive** |" in table
