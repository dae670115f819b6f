"""Sweeps: every arm of a comparison at evenly spaced preference vectors, over seeds, in one process, resumable.

An arm (`Arm`) is one algorithm variant: a label and dotted overrides of the sweep's config, e.g.
`Arm("fmgda-sgd", ("algorithm.name=fmgda", "algorithm.optimizer=sgd", "algorithm.lr=0.05"))`, in the
syntax of `firm train key=value` (firm.config.parse_override); `Arm.of("fedavg")` is the plain
algorithm. The references `centralized` and `local` are arms too: every point runs through
firm.launch, as `firm train` does.

`preference_grid(M, D)` is the simplex lattice {k / D : k in N^M, sum k = D} (D + 1 points for
M = 2, evenly spaced). `sweep(config, arms, divisions, seeds)` trains every arm at every grid point
once per seed s, with federation.seed = s, keeping the base model and scorers loaded between the
runs of one seed (`reuse_model=True`). An arm whose training never reads the preference
(`firm.algorithms.uses_preference`, declared by each algorithm: mgda, fmgda without steering, a
reference whose rule is mgda) runs once per seed, at the config's own preference, and is one point
of the comparison, not a front of copies.

Paired evaluation: `data.seed` is resolved once from the base config (-1 becomes the base
federation.seed) and is the same in every run of the sweep, so every arm and seed is evaluated on
the same held-out prompts with the same sampling seeds, and trains on the same client partition;
the seed varies the training only (LoRA init, client sampling, rollouts). Differences between arms
at one seed are paired, and the spread over seeds is the training's. Arms may not override what
picks the evaluation or what the sweep sets per point (`SHARED_KEYS`). (The tiny random test model
also draws its base weights from federation.seed, so there each seed has its own base model.)

    <output.dir>/<output.name>/
        sweep.json              "key": what must match to resume (the config without output,
                                algorithm.name, objectives.preference and federation.seed; the arms
                                with their overrides and algorithm; the seeds; the divisions);
                                "objectives", "seeds", "arms" (label, algorithm, overrides,
                                uses_preference), "expected" (every point's label, seed, run directory),
                                "points" (`_record`), "pareto" (firm.pareto.seeded_pareto: the
                                hypervolume per arm and seed, and its mean and 95 % t interval)
        <label>-pNN-sS/         one ordinary run directory per (arm, preference NN, seed S)
        <label>-sS/             the point of an arm that ignores the preference
                                (with one seed, no -sS: `<label>-pNN/` and `<label>/`)

Resuming: running the same sweep again (same output.name) skips every point whose run directory
has `summary.json` with status `completed`; a point whose run directory exists but did not
complete is deleted and run again (its partial files belong to this sweep). A sweep directory made
with another config, other arms or other seeds is refused, never overwritten; so is one made by a
firm before arms and seeds (its key has no "arms"), with a message that says so (`firm compare
SWEEP_DIR` still rewrites its comparison).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firm.config import Config, ConfigError, config_from_dict, config_to_dict
from firm.config_io import apply_override, parse_override
from firm.data import data_seed
from firm.pareto import common_base, preference_grid, seeded_pareto
from firm.validation import validate

SHARED_KEYS = (
    "output",
    "objectives",
    "eval",
    "federation.seed",
    "data.seed",
    "data.sources",
    "data.max_prompts_per_source",
    "data.eval_provocative_share",
)
"""Config keys an arm may not override: the sweep sets them per point (output, objectives.preference,
federation.seed), or they choose the held-out evaluation that every arm and seed shares."""

LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class Arm:
    """One algorithm variant of a sweep: a label (its run directories' prefix) and dotted overrides of the config."""

    label: str
    overrides: tuple[str, ...] = ()

    @classmethod
    def of(cls, algorithm: str) -> Arm:
        """The plain algorithm (or reference) `algorithm`, labelled with its name."""
        return cls(algorithm, (f"algorithm.name={algorithm}",))

    @classmethod
    def parse(cls, text: str) -> Arm:
        """`LABEL:key=value,key=value` (the CLI's --arm; commas inside [...] or quotes stay in the value); `NAME` alone is `Arm.of(NAME)`."""
        label, sep, rest = text.partition(":")
        label = label.strip()
        if not sep:
            return cls.of(label)
        return cls(label, tuple(_split_top_level(rest)))


def _split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets, braces and quotes: `a=1,b=[1, 2]` -> ["a=1", "b=[1, 2]"]."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` -> [0, 1, 2] (the CLI's --seeds); ConfigError on anything else."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    return seeds


def arm_config(config: Config, arm: Arm) -> Config:
    """`config` with the arm's overrides, validated (firm.validation.validate); ConfigError names the arm."""
    if not LABEL.fullmatch(arm.label):
        raise ConfigError(f"arm label {arm.label!r}: use letters, digits and _ . + - (not first), e.g. fmgda-sgd")
    data = config_to_dict(config)
    try:
        for text in arm.overrides:
            key = ".".join(parse_override(text)[0])
            shared = [s for s in SHARED_KEYS if key == s or key.startswith(f"{s}.") or s.startswith(f"{key}.")]
            if shared:
                raise ConfigError(
                    f"override {text!r}: {shared[0]} is set by the sweep or shared by all its arms (paired evaluation)"
                )
            apply_override(data, text)
        result = config_from_dict(data)
        validate(result)
    except ConfigError as err:
        raise ConfigError(f"arm {arm.label!r}: {err}") from None
    return result


def config_delta(config: Config) -> dict[str, Any]:
    """The config's fields that differ from the defaults (`Config()`), nested like `config_to_dict`.

    What a resumable sweep or benchmark compares to decide it is the same one: a field a later firm
    adds (with a default that keeps the old behaviour) leaves it unchanged, so a sweep made before
    the field existed still resumes; a changed value, or a changed default, does not match."""
    defaults = config_to_dict(Config())

    def diff(value: Any, default: Any) -> Any:
        if isinstance(value, dict) and isinstance(default, dict):
            out = {k: d for k, v in value.items() if (d := diff(v, default.get(k, _MISSING))) is not _MISSING}
            return out if out else _MISSING
        return _MISSING if value == default else value

    delta = diff(config_to_dict(config), defaults)
    return {} if delta is _MISSING else delta


_MISSING: Any = object()


def _sweep_key(config: Config, arms: list[tuple[Arm, Config]], divisions: int, seeds: list[int]) -> dict[str, Any]:
    """What must match for a sweep directory to be resumed: the config's delta from the defaults
    (`config_delta`) but output and the swept keys; the arms, seeds and divisions."""
    data = config_delta(config)
    data.pop("output", None)
    for section, key in (("algorithm", "name"), ("objectives", "preference"), ("federation", "seed")):
        data.get(section, {}).pop(key, None)
    data = {k: v for k, v in data.items() if v}
    return {
        "config": data,
        "arms": [{"label": a.label, "overrides": list(a.overrides), "algorithm": c.algorithm.name} for a, c in arms],
        "seeds": seeds,
        "divisions": divisions,
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def sweep_dir(config: Config) -> Path:
    """Where a sweep of this config lives (output.dir / output.name, or a timestamped name)."""
    from firm.rundir import run_name

    return Path(config.output.dir) / run_name(config, "sweep")


def sweep(
    config: Config,
    arms: Sequence[Arm | str],
    divisions: int,
    seeds: Sequence[int] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """Run (or resume) the sweep of `arms` (an `Arm`, or an algorithm name for `Arm.of(name)`) at the
    preference lattice of step 1 / `divisions`, once per seed (default: the config's federation.seed);
    returns the contents written to sweep.json, with "path". Every arm is checked before the first run.

    `shard = (i, n)`, n > 1: run only every n-th point from the i-th (n processes share the work); a
    shard writes sweep.json's plan if there is none and never its points: the unsharded call made
    after the shards have finished skips their completed runs and writes the whole sweep.json."""
    from firm import train
    from firm.algorithms import uses_preference
    from firm.rundir import write_atomic

    validate(config)
    chosen = [a if isinstance(a, Arm) else Arm.of(a) for a in arms]
    if not chosen:
        raise ConfigError("give at least one arm (--algorithms or --arm)")
    seed_list = [config.federation.seed] if seeds is None else list(seeds)
    if not seed_list or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seed_list):
        raise ConfigError(f"--seeds: give one or more integers >= 0, got {seed_list}")
    if len(set(seed_list)) != len(seed_list):
        raise ConfigError(f"--seeds: a seed is repeated in {seed_list}")
    labels = [a.label for a in chosen]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"arm labels must differ; repeated: {sorted({x for x in labels if labels.count(x) > 1})}")
    # data.seed fixed for the whole sweep: the same held-out prompts, partition and eval seeds in every run
    base = dataclasses.replace(config, data=dataclasses.replace(config.data, seed=data_seed(config)))
    # a bad arm, or a setting one of them refuses (aggregation.clip_norm with fmgda), stops the sweep before its first run
    planned = [(arm, arm_config(base, arm)) for arm in chosen]

    grid = preference_grid(config.num_objectives, divisions)
    many = len(seed_list) > 1
    todo: list[tuple[int, Arm, Config, tuple[float, ...] | None, str]] = []
    for seed in seed_list:  # seed outermost: one base model in memory at a time
        for arm, arm_cfg in planned:
            tail = f"-s{seed}" if many else ""
            if uses_preference(arm_cfg):
                todo += [(seed, arm, arm_cfg, p, f"{arm.label}-p{i:02d}{tail}") for i, p in enumerate(grid)]
            else:
                todo.append((seed, arm, arm_cfg, None, f"{arm.label}{tail}"))
    names = [name for *_, name in todo]
    if len(set(names)) != len(names):
        raise ConfigError(f"arm labels give the same run directory twice: {sorted({n for n in names if names.count(n) > 1})}")

    out = config.output
    root = sweep_dir(config)
    key = _sweep_key(base, planned, divisions, seed_list)
    existing = _read_json(root / "sweep.json")
    if existing is not None and isinstance(existing.get("key"), dict) and "arms" not in existing["key"]:
        raise ConfigError(
            f"{root} holds a sweep made by an older firm (no arms or seeds), which this one cannot resume; "
            f"choose another output.name (`firm compare {root}` still rewrites its comparison)"
        )
    if existing is not None and existing.get("key") != key:
        raise ConfigError(f"{root} holds a sweep with a different config, arms or seeds; choose another output.name")
    if existing is None and root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} exists and is not a sweep directory; choose another output.name")
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard {shard}: expected (i, n) with 0 <= i < n")
    root.mkdir(parents=True, exist_ok=True)

    objectives = list(config.objectives.names)
    points: list[dict[str, Any]] = []
    state: dict[str, Any] = {
        "key": key,
        "objectives": objectives,
        "seeds": seed_list,
        "arms": [
            {
                "label": a.label,
                "algorithm": c.algorithm.name,
                "overrides": list(a.overrides),
                "uses_preference": uses_preference(c),
            }
            for a, c in planned
        ],
        "expected": [{"label": arm.label, "seed": seed, "run_dir": name} for seed, arm, _, _, name in todo],
        "points": points,
    }
    from tqdm.auto import tqdm

    if count > 1:  # a shard: its share of the points; sweep.json keeps the plan until the unsharded call
        if existing is None:
            write_atomic(root / "sweep.json", json.dumps(state, indent=2) + "\n")
        todo = todo[index::count]
    bar = tqdm(todo, unit="run", disable=not out.progress, dynamic_ncols=True)
    current_seed = None
    for seed, arm, arm_cfg, pref, name in bar:
        if seed != current_seed:  # the previous seed's base model is not needed again
            train.release_models()
            current_seed = seed
        shown = "any" if pref is None else str(tuple(round(v, 2) for v in pref))
        bar.set_description(f"{name} p={shown}")
        run_dir = root / name
        point = dataclasses.replace(
            arm_cfg,
            federation=dataclasses.replace(arm_cfg.federation, seed=seed),
            objectives=arm_cfg.objectives if pref is None else dataclasses.replace(arm_cfg.objectives, preference=pref),
            output=dataclasses.replace(arm_cfg.output, dir=str(root), name=name, progress=False),
        )
        summary = run_point(point)
        points.append(_record(arm, point, pref is not None, name, summary, run_dir))
        if count == 1:
            write_atomic(root / "sweep.json", json.dumps(state, indent=2) + "\n")  # progress survives a crash
    if count > 1:
        return {**state, "path": str(root)}
    state["pareto"] = _pareto(points, objectives, labels)
    write_atomic(root / "sweep.json", json.dumps(state, indent=2) + "\n")
    state["path"] = str(root)
    return state


def run_point(point: Config) -> dict[str, Any]:
    """The summary of the run at `point.output.dir / point.output.name`: read if it completed, else the run
    is made from its start (a partial directory left by an interrupted sweep is deleted first), through
    firm.launch as `firm train` runs it, keeping the base model loaded between federated runs."""
    from firm.config import REFERENCES
    from firm.launch import run

    run_dir = Path(point.output.dir) / point.output.name
    summary = _read_json(run_dir / "summary.json")
    if summary is not None and summary.get("status") == "completed":
        return summary
    if run_dir.exists():
        shutil.rmtree(run_dir)
    options = {} if point.algorithm.name in REFERENCES else {"reuse_model": True}
    return run(point, **options).summary


def _means(figures: Any) -> Any:
    """A `local` reference's spreads over clients {"mean", "std", "min", "max"} -> their means; plain values as they are."""
    if isinstance(figures, dict) and "mean" in figures:
        return figures["mean"]
    if isinstance(figures, dict):
        return {k: _means(v) for k, v in figures.items()}
    return figures


def _record(arm: Arm, config: Config, uses_preference: bool, name: str, summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """sweep.json's entry of one point. "preference" is the p the run was given; with "uses_preference"
    false the arm's training ignored it (one point per seed). A `local` reference's figures are the
    means over its clients (the spreads stay in its summary.json)."""
    initial = summary.get("initial_eval")
    if initial is None and summary.get("clients"):  # `local`: every client starts from the same base figures
        initial = (_read_json(run_dir / str(summary["clients"][0]) / "summary.json") or {}).get("initial_eval")
    return {
        "label": arm.label,
        "algorithm": config.algorithm.name,
        "preference": list(config.objectives.preference_vector),
        "uses_preference": uses_preference,
        "seed": config.federation.seed,
        "run_dir": name,
        "status": summary.get("status"),
        "initial_eval": initial,
        "final_eval": _means(summary.get("final_eval")),
        "final_eval_se": summary.get("final_eval_se"),
        "final_kl": _means(summary.get("final_kl")),
        "total_upload_bytes": summary.get("total_upload_bytes"),
        "wall_time_s": summary.get("wall_time_s"),
    }


def _pareto(points: list[dict[str, Any]], names: list[str], labels: list[str]) -> dict[str, Any] | None:
    """sweep.json's "pareto": firm.pareto.seeded_pareto of the completed points' final eval vectors, each seed
    against its own base model (the points' shared initial eval, firm.pareto.common_base)."""
    finals: dict[str, dict[int, list[list[float]]]] = {label: {} for label in labels}
    initials: dict[int, list[Any]] = {}
    for p in points:
        if p["status"] == "completed" and p["final_eval"] and all(n in p["final_eval"] for n in names):
            initials.setdefault(p["seed"], []).append(p.get("initial_eval"))  # a failed point's has no say
            finals[p["label"]].setdefault(p["seed"], []).append([float(p["final_eval"][n]) for n in names])
    return seeded_pareto(finals, {s: common_base(v, names) for s, v in initials.items()})


def sweep_table(state: dict[str, Any]) -> str:
    """What `firm sweep` prints: one line per point, then each arm's hypervolume (mean and 95 % t interval over seeds)."""
    names = list(state.get("objectives") or [])
    lines = ["arm              seed  preference      " + "  ".join(f"{n:>12s}" for n in names)]
    for p in state["points"]:
        pref = "any" if not p.get("uses_preference", True) else "(" + ", ".join(f"{v:.2f}" for v in p["preference"]) + ")"
        evals = p["final_eval"] or {}
        values = "  ".join(f"{evals.get(n, float('nan')):12.4f}" for n in names)
        lines.append(f"{p['label']:<16s} {p['seed']!s:>4s}  {pref:<15s} {values}")
    intervals = (state.get("pareto") or {}).get("interval") or {}
    if intervals:
        cells = []
        for label, iv in intervals.items():
            spread = f" [{iv['low']:.4f}, {iv['high']:.4f}]" if iv["low"] is not None else ""
            cells.append(f"{label} {iv['mean']:.4f}{spread} (n={iv['n']})")
        lines.append("hypervolume over the base model, mean [95 % t interval] over seeds (see sweep.json): " + ", ".join(cells))
    return "\n".join(lines)
