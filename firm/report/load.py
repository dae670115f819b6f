"""The reports' inputs, parsed: a run directory (`load_run` -> Run) and a sweep directory (`load_sweep` -> Sweep).

Inputs, all in the run directory:

    metrics.jsonl   required; one JSON object per round
    summary.json    optional (absent while a run is in progress); initial_eval / initial_kl give round 0
    config.toml     optional; shown verbatim
    samples.jsonl   optional; sample completions of the base and the final model on held-out prompts,
                    one JSON object per line:
                        {"prompt": str, "base": str, "final": str,
                         "base_rewards": {objective: float}, "final_rewards": {objective: float}}
                    "base" / "final" are the completions of the initial and of the final adapter for
                    that prompt, the rewards are each completion's score per objective.
    palette.json    optional; the MAP targets the run trained toward (firm.palette)

A sweep directory (firm.sweep) is sweep.json plus one run directory per point: an arm (label), a
preference and a seed. A point that did not complete, whose run directory is missing or unreadable,
or that has no final eval is kept with the reason in `SweepPoint.skipped`, so the comparison can
leave it out of the figures and list it. A sweep.json of a firm before arms and seeds reads as one
seed with one arm per algorithm.

Both loaders raise ReportError, one line naming the file (and line), on a directory that is not one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class ReportError(ValueError):
    """The directory is not a readable run (or sweep) directory; the message names the file (and line)."""


# ---------------------------------------------------------------------------------------------
# A run directory


@dataclass(frozen=True)
class Run:
    """The files of one run directory, parsed."""

    path: Path
    metrics: list[dict[str, Any]]  # one row per round, as in metrics.jsonl
    summary: dict[str, Any] = field(default_factory=dict)
    config_text: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    palette: dict[str, Any] | None = None  # palette.json, when the run trained toward MAP targets

    @property
    def objectives(self) -> list[str]:
        if self.summary.get("objectives"):
            return [str(n) for n in self.summary["objectives"]]
        for row in self.metrics:
            for source in (row.get("eval"), _get(row, "train", "reward")):
                if isinstance(source, dict) and source:
                    return list(source)
        return []

    @property
    def num_objectives(self) -> int:
        if self.objectives:
            return len(self.objectives)
        return next((len(w) for row in self.metrics for w in (row.get("weights") or {}).values()), 0)

    @property
    def preference(self) -> list[float]:
        p = self.summary.get("preference")
        if p:
            return [float(x) for x in p]
        m = self.num_objectives
        return [1.0 / m] * m if m else []

    @property
    def subject(self) -> str:
        """What the eval and KL figures are measured on, for plot titles."""
        return "clients' own adapters" if self.summary.get("reference") == "local" else "global adapter"

    @property
    def rounds(self) -> list[int]:
        return [int(row["round"]) for row in self.metrics]

    @property
    def base_eval(self) -> dict[str, float]:
        return {k: _num(v) for k, v in (self.summary.get("initial_eval") or {}).items()}

    @property
    def final_eval(self) -> dict[str, float]:
        """summary.final_eval; while running or after a failure, the last evaluated round."""
        final = self.summary.get("final_eval")
        if not final:
            last = next((row for row in reversed(self.metrics) if row.get("eval")), None)
            final = last["eval"] if last else {}
        return {k: _num(v) for k, v in final.items()}

    @property
    def base_eval_se(self) -> dict[str, float | None]:
        """summary.initial_eval_se: the base model's standard errors (empty for a run of an older firm)."""
        return dict(self.summary.get("initial_eval_se") or {})

    @property
    def final_eval_se(self) -> dict[str, float | None]:
        """summary.final_eval_se; while running, the last evaluated round's."""
        final = self.summary.get("final_eval_se")
        if not final:
            last = next((row for row in reversed(self.metrics) if row.get("eval")), None)
            final = (last or {}).get("eval_se") or {}
        return dict(final)

    def change_se(self) -> dict[str, float | None]:
        """Paired standard error of final - base per objective: sd_j(final_j - base_j) / sqrt(P) over the
        held-out prompts j (both evaluated on the same prompts with the same sampling seeds)."""
        base, final = self.summary.get("initial_eval_prompt_means"), self.summary.get("final_eval_prompt_means")
        if not base or not final or len(base) != len(final) or len(base) < 2:
            return {}
        diffs = np.asarray(final, dtype=float) - np.asarray(base, dtype=float)  # [P, M]
        se = diffs.std(axis=0, ddof=1) / np.sqrt(len(diffs))
        return dict(zip(self.objectives, se.tolist(), strict=False))

    @property
    def base_kl(self) -> float | None:
        kl = self.summary.get("initial_kl")
        return None if kl is None else _num(kl)

    @property
    def final_kl(self) -> float | None:
        if self.summary.get("final_kl") is not None:
            return _num(self.summary["final_kl"])
        return next((_num(row["kl"]) for row in reversed(self.metrics) if row.get("kl") is not None), None)

    @property
    def total_bytes(self) -> tuple[int, int]:
        """(upload, download) over all rounds."""
        up = self.summary.get("total_upload_bytes")
        down = self.summary.get("total_download_bytes")
        if up is None or down is None:
            up = sum(int(_get(r, "comm", "upload_bytes") or 0) for r in self.metrics)
            down = sum(int(_get(r, "comm", "download_bytes") or 0) for r in self.metrics)
        return int(up), int(down)


def _get(row: dict[str, Any], *keys: str) -> Any:
    value: Any = row
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _num(value: Any) -> float:
    """A metric as a float: None -> nan; a spread over clients {"mean", "std", "min", "max"} (the
    parent directory of a `local` reference run) -> its mean."""
    if isinstance(value, dict):
        value = value.get("mean")
    return math.nan if value is None else float(value)


def _band(value: Any) -> tuple[float, float] | None:
    """(min, max) of a spread over clients, None for a plain number."""
    if isinstance(value, dict) and value.get("min") is not None and value.get("max") is not None:
        return float(value["min"]), float(value["max"])
    return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ReportError(f"{path}: line {lineno} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ReportError(f"{path}: line {lineno} is not a JSON object")
            rows.append(row)
    return rows


def load_run(run_dir: Path | str) -> Run:
    """Parse a run directory; ReportError (one line, naming file and line) if it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: no such run directory")
    metrics_path = path / "metrics.jsonl"
    if not metrics_path.is_file():
        raise ReportError(f"{path}: no metrics.jsonl, not a firm run directory")
    metrics = _read_jsonl(metrics_path)
    for lineno, row in enumerate(metrics, start=1):
        if not isinstance(row.get("round"), int):
            raise ReportError(f"{metrics_path}: row {lineno} has no integer 'round'")
    if not metrics:
        raise ReportError(f"{metrics_path}: no rounds recorded yet")
    summary: dict[str, Any] = {}
    summary_path = path / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ReportError(f"{summary_path}: line {err.lineno} is not valid JSON ({err.msg})") from None
        if not isinstance(summary, dict):
            raise ReportError(f"{summary_path}: not a JSON object")
    if "initial_eval" not in summary and summary.get("clients"):
        # a `local` reference parent: every client starts from the same adapter and is evaluated on
        # the same prompts with the same seed, so any client's initial figures are the base figures
        first = path / str(summary["clients"][0]) / "summary.json"
        try:
            client = json.loads(first.read_text(encoding="utf-8"))
            summary = {**summary, "initial_eval": client["initial_eval"], "initial_kl": client["initial_kl"]}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # base figures shown as n/a
    config_path = path / "config.toml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    samples_path = path / "samples.jsonl"
    samples = _read_jsonl(samples_path) if samples_path.is_file() else []
    palette = None
    palette_path = path / "palette.json"
    if palette_path.is_file():
        try:
            palette = json.loads(palette_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ReportError(f"{palette_path}: line {err.lineno} is not valid JSON ({err.msg})") from None
    return Run(path=path, metrics=metrics, summary=summary, config_text=config_text, samples=samples, palette=palette)


# ---------------------------------------------------------------------------------------------
# A sweep directory


@dataclass(frozen=True)
class SweepPoint:
    """One (arm, preference, seed) point: its sweep.json entry and, when usable, its parsed run."""

    label: str  # the arm; a plain algorithm's is its name
    algorithm: str
    preference: tuple[float, ...]  # the p the run was given (ignored by its training unless uses_preference)
    run_dir: str  # relative to the sweep directory
    record: dict[str, Any]  # the point's entry in sweep.json
    seed: int | None = None  # federation.seed; None in a hand-made sweep.json that does not say
    uses_preference: bool = True  # False: the arm trains the same at every p, one point per seed
    run: Run | None = None  # None when skipped
    final: tuple[float, ...] = ()  # [M] final eval reward per objective; () when skipped
    skipped: str | None = None  # why the point is left out of the figures


@dataclass(frozen=True)
class Sweep:
    """A sweep directory, parsed: sweep.json and the runs of its points."""

    path: Path
    data: dict[str, Any]  # sweep.json
    objectives: list[str]
    points: list[SweepPoint]  # in sweep.json order: per seed and arm, objective 1's weight from high to low
    expected: list[tuple[str, str]] = field(default_factory=list)  # (label, run directory) of every point the sweep plans

    @property
    def missing(self) -> list[str]:
        """Run directories the sweep plans that sweep.json does not list (yet)."""
        listed = {p.run_dir for p in self.points}
        return [run_dir for _, run_dir in self.expected if run_dir not in listed]

    def expected_count(self, label: str) -> int:
        """Points the sweep plans for the arm (those listed if it plans none: a hand-made sweep.json)."""
        return sum(lab == label for lab, _ in self.expected) or sum(p.label == label for p in self.points)

    @property
    def arms(self) -> list[str]:
        """The arms' labels in the sweep's order (an older sweep's algorithms), then any others its points name."""
        arms = _get(self.data, "key", "arms")
        order = [str(a["label"]) for a in arms if isinstance(a, dict)] if isinstance(arms, list) else []
        order = order or [str(a) for a in _get(self.data, "key", "algorithms") or []]
        return order + [a for a in dict.fromkeys(p.label for p in self.points) if a not in order]

    @property
    def seeds(self) -> list[int | None]:
        """The seeds of the sweep (sweep.json's "seeds"), then any others its points name."""
        order = [int(s) for s in self.data.get("seeds") or []]
        return order + [s for s in dict.fromkeys(p.seed for p in self.points) if s not in order]

    def usable(self, label: str, seed: int | str | None = "all") -> list[SweepPoint]:
        """The arm's usable points, at every seed or at one."""
        return [p for p in self.points if p.label == label and p.skipped is None and (seed == "all" or p.seed == seed)]

    def uses_preference(self, label: str) -> bool:
        return all(p.uses_preference for p in self.points if p.label == label)

    def central(self, label: str, seed: int | str | None = "all") -> SweepPoint | None:
        """The usable point (at `seed`) whose preference is closest (Euclidean) to uniform; the first of ties."""
        m = len(self.objectives)
        return min(self.usable(label, seed), key=lambda p: sum((w - 1.0 / m) ** 2 for w in p.preference), default=None)

    def central_by_seed(self, label: str) -> dict[int | None, SweepPoint]:
        """seed -> the arm's point closest to uniform at that seed (seeds without a usable point left out)."""
        return {s: p for s in self.seeds if (p := self.central(label, s)) is not None}


def _vector(evals: Any, names: list[str]) -> tuple[float, ...] | None:
    """[M] rewards in the order of names (spreads over clients -> mean); None unless all are finite."""
    if not isinstance(evals, dict):
        return None
    values = tuple(_num(evals.get(n)) for n in names)
    return values if values and all(math.isfinite(v) for v in values) else None


def _sweep_point(root: Path, record: dict[str, Any], names: list[str], default_seed: Any) -> SweepPoint:
    algorithm, run_dir = record["algorithm"], record["run_dir"]
    try:
        preference = tuple(float(w) for w in record.get("preference") or ())
    except (TypeError, ValueError):
        preference = ()
    seed = record.get("seed", default_seed)
    point = SweepPoint(
        label=str(record.get("label") or algorithm),
        algorithm=algorithm,
        preference=preference,
        run_dir=run_dir,
        record=record,
        seed=seed if isinstance(seed, int) else None,
        uses_preference=record.get("uses_preference") is not False,
    )
    status = record.get("status")
    if status != "completed":
        error = _get(_read_json(root / run_dir / "summary.json"), "error")
        return dataclasses.replace(point, skipped=f"status {status}" + (f": {error}" if error else ""))
    try:
        run = load_run(root / run_dir)
    except (ReportError, OSError, UnicodeDecodeError) as err:
        return dataclasses.replace(point, skipped=str(err))
    final = _vector(record.get("final_eval") or run.final_eval, names)
    if final is None or len(preference) != len(names):
        return dataclasses.replace(point, skipped="no final eval on every objective" if final is None else "no preference")
    return dataclasses.replace(point, run=run, final=final)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def load_sweep(sweep_dir: Path | str) -> Sweep:
    """Parse a sweep directory; ReportError (one line, naming the file) if it is not one."""
    path = Path(sweep_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: no such sweep directory")
    sweep_path = path / "sweep.json"
    if not sweep_path.is_file():
        raise ReportError(f"{path}: no sweep.json, not a firm sweep directory (for one run, use `firm report`)")
    try:
        data = json.loads(sweep_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{sweep_path}: line {err.lineno} is not valid JSON ({err.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise ReportError(f"{sweep_path}: no list of points, not a firm sweep.json")
    records = data["points"]
    for i, record in enumerate(records, start=1):
        if not (isinstance(record, dict) and isinstance(record.get("algorithm"), str) and isinstance(record.get("run_dir"), str)):
            raise ReportError(f"{sweep_path}: point {i} has no algorithm or run_dir")
    names = data.get("objectives") or _get(data, "key", "config", "objectives", "names")
    if not names:  # an old or hand-made sweep.json: ask the first run
        names = next(
            (load_run(path / r["run_dir"]).objectives for r in records if (path / r["run_dir"] / "metrics.jsonl").is_file()), []
        )
    names = [str(n) for n in names]
    default_seed = _get(data, "key", "config", "federation", "seed")  # a sweep of an older firm: its one seed
    points = [_sweep_point(path, record, names, default_seed) for record in records]
    expected: list[tuple[str, str]] = []
    algorithms, divisions = _get(data, "key", "algorithms"), _get(data, "key", "divisions")
    if isinstance(data.get("expected"), list):
        expected = [(str(e.get("label")), str(e["run_dir"])) for e in data["expected"] if isinstance(e, dict) and "run_dir" in e]
    elif isinstance(algorithms, list) and isinstance(divisions, int) and divisions >= 1 and names:
        from firm.pareto import preference_grid  # a sweep of an older firm: every algorithm at every grid point

        grid = preference_grid(len(names), divisions)
        expected = [(str(a), f"{a}-p{i:02d}") for a in algorithms for i in range(len(grid))]
    return Sweep(path=path, data=data, objectives=names, points=points, expected=expected)
