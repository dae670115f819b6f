"""Preference sweeps: one run per (algorithm, preference vector), in one process, resumable.

`preference_grid(M, D)` is the simplex lattice {k / D : k in N^M, sum k = D} (D + 1 points for
M = 2, evenly spaced). `sweep` trains every algorithm at every grid point with the same config and
seed, keeping the base model and scorers loaded between runs (`firm.run(..., reuse_model=True)`),
and writes

    <output.dir>/<output.name>/
        sweep.json              the sweep config, and per point: algorithm, preference, run dir,
                                status, final eval rewards (and, when available, the Pareto metrics)
        <algorithm>-pNN/        one ordinary run directory per point

Resuming: running the same sweep again (same output.name) skips every point whose run directory
has `summary.json` with status `completed`; a point whose run directory exists but did not
complete is deleted and run again (its partial files belong to this sweep). A sweep directory made
with a different config is refused, never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from firm.config import Config, ConfigError, config_to_dict
from firm.pareto import common_base, pareto_summary, preference_grid
from firm.validation import validate


def _sweep_key(config: Config, algorithms: Sequence[str], divisions: int) -> dict[str, Any]:
    """What must match for a sweep directory to be resumed: everything but output and the swept keys."""
    data = config_to_dict(config)
    data.pop("output")
    data["algorithm"].pop("name")
    data["objectives"].pop("preference")
    return {"config": data, "algorithms": list(algorithms), "divisions": divisions}


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


def sweep(config: Config, algorithms: Sequence[str], divisions: int) -> dict[str, Any]:
    """Run (or resume) the sweep; returns the contents written to sweep.json."""
    from firm.algorithms import REGISTRY as ALGORITHMS
    from firm.rundir import write_atomic
    from firm.train import run

    validate(config)
    for name in algorithms:
        if name not in ALGORITHMS:
            raise ConfigError(f"--algorithms: unknown algorithm {name!r}; allowed: {', '.join(sorted(ALGORITHMS))}")
    if not algorithms:
        raise ConfigError("--algorithms: give at least one algorithm")
    # a setting one of the algorithms refuses (aggregation.clip_norm with fmgda) stops the sweep before its first run
    for name in algorithms:
        validate(dataclasses.replace(config, algorithm=dataclasses.replace(config.algorithm, name=name)))
    out = config.output
    root = sweep_dir(config)
    key = _sweep_key(config, algorithms, divisions)
    existing = _read_json(root / "sweep.json")
    if existing is not None and existing.get("key") != key:
        raise ConfigError(f"{root} holds a sweep with a different config; choose another output.name")
    if existing is None and root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} exists and is not a sweep directory; choose another output.name")
    root.mkdir(parents=True, exist_ok=True)

    grid = preference_grid(config.num_objectives, divisions)
    points: list[dict[str, Any]] = []
    state: dict[str, Any] = {"key": key, "points": points}
    from tqdm.auto import tqdm

    todo = [(alg, i, p) for alg in algorithms for i, p in enumerate(grid)]
    bar = tqdm(todo, unit="run", disable=not out.progress, dynamic_ncols=True)
    for alg, idx, pref in bar:
        name = f"{alg}-p{idx:02d}"
        bar.set_description(f"{name} p={tuple(round(v, 2) for v in pref)}")
        run_dir = root / name
        summary = _read_json(run_dir / "summary.json")
        if summary is None or summary.get("status") != "completed":
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a partial run of this sweep: redo it from the start
            point_config = dataclasses.replace(
                config,
                algorithm=dataclasses.replace(config.algorithm, name=alg),
                objectives=dataclasses.replace(config.objectives, preference=pref),
                output=dataclasses.replace(out, dir=str(root), name=name, progress=False),
            )
            summary = run(point_config, reuse_model=True).summary
        points.append(
            {
                "algorithm": alg,
                "preference": list(pref),
                "run_dir": name,
                "status": summary.get("status"),
                "initial_eval": summary.get("initial_eval"),
                "final_eval": summary.get("final_eval"),
                "final_kl": summary.get("final_kl"),
                "total_upload_bytes": summary.get("total_upload_bytes"),
                "wall_time_s": summary.get("wall_time_s"),
            }
        )
        write_atomic(root / "sweep.json", json.dumps(state, indent=2) + "\n")  # progress survives a crash
    state["objectives"] = list(config.objectives.names)
    state["pareto"] = _pareto(points, list(config.objectives.names))
    write_atomic(root / "sweep.json", json.dumps(state, indent=2) + "\n")
    state["path"] = str(root)
    return state


def _pareto(points: list[dict[str, Any]], names: list[str]) -> dict[str, Any] | None:
    """sweep.json's "pareto": `pareto_summary` of the final eval vectors of the points that have one."""
    finals: dict[str, list[list[float]]] = {}
    for p in points:
        if p["final_eval"]:
            finals.setdefault(p["algorithm"], []).append([p["final_eval"][n] for n in names])
    return pareto_summary(finals, common_base([p.get("initial_eval") for p in points], names))
