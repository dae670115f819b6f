"""The comparison of issue 17: FIRM against its baselines on a real conflict, over seeds, resumable.

    python benchmarks/evidence.py [--quick] [--out runs/evidence] [--task helpful-vs-concise]
    python benchmarks/results.py runs/evidence          # then: docs/results.md and its plots

Three stages, each resumable (a completed run is skipped when the command is run again; a run cut
short is redone from its start; a stage's directory made with other settings is refused):

1. **Learning rates, on a validation split** (full profile). The task's training prompts (its
   held-out test prompts removed: `split_prompts` at the task's data.seed) are written to
   `<out>/validation-pool.jsonl`; tuning runs train on it and are evaluated on a held-out part of
   it, so no tuning run sees a test prompt. Every algorithm gets the same grid size: Adam's
   `ADAM_GRID` for firm, fedavg and mgda; SGD's `SGD_GRID` for fmgda and fedcmoo, whose min-norm
   guarantees are for gradient-descent steps (their papers' setting). One run per (algorithm,
   lr) at p = (1/M, ...), seed `TUNING_SEED`. The choice maximises the KL-regularised objective they all
   train for, as a gain: the mean over objectives of final minus initial validation reward, minus
   beta_kl x the final per-token KL (`_improvement`; the same criterion for every algorithm; ties
   go to the smaller lr) and is written to `<out>/tuning.json`. The steered variants and the references
   take their base algorithm's lr (FIRM's for the references, whose single learner uses FIRM's
   rule). The quick profile skips this stage and uses each grid's middle value.
2. **The sweep** (`firm.sweep.sweep`, `<out>/sweep`): firm and fedavg at every preference of the
   grid; mgda, fmgda and fedcmoo (p-agnostic) once per seed; the steered fmgda and fedcmoo at
   every preference (full profile); every seed of the profile. `data.seed` is the task's, fixed:
   every arm, preference, seed and round is evaluated on the same held-out prompts with the same
   sampling seeds (paired), and trains on the same client partition.
3. **References** (full profile, `<out>/references`): `centralized` and `local` with FIRM's rule at
   p = (1/M, ...), once per seed.

Profiles (`PROFILES`): `full` is the acceptance run (90 runs: 15 tuning, 69 in the sweep, 6
references; float32, so every machine it resumes on computes the same thing up to float rounding:
the base model's held-out rewards differed in the 8th digit between two CPUs, which
firm.pareto.BASE_TOLERANCE absorbs); `quick` checks the
whole pipeline in about 30 minutes on a 2-core CPU with fewer seeds, preferences, arms and rounds
(its figures are not evidence). The settings are printed at the start and written to
`<out>/evidence.json`, with every invocation's machine, start, end and wall time.

Across checkouts (`--records`, default `docs/results/runs.json.gz` for the full profile): every two
minutes, and at the end, the completed runs' small files (firm.records.RUN_FILES: summary,
metrics, config; no adapters or checkpoints) and the stages' plans are saved to a gzip JSON archive
(firm.records), and
the next invocation first writes back whatever is missing, so a run of several hours continues in
a fresh clone where the last one stopped. `--jobs 2` runs each stage in two worker processes of one
compute thread each (`firm.sweep.sweep(..., shard=(i, n))`), then assembles it in the parent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from firm.config import Config, ConfigError
from firm.data import split_prompts
from firm.provenance import machine
from firm.records import RecordSaver, resume_from
from firm.sweep import Arm, arm_config, config_delta, run_point, sweep
from firm.validation import load_config

ADAM_GRID = (2e-3, 5e-3, 1.25e-2)
SGD_GRID = (4.0, 10.0, 25.0)
"""Three points 2.5x apart for every optimizer. Adam's starts at the project's default (2e-3) and
goes up, since the budget is a few local steps per client. SGD's step is lr x the gradient (the
combined direction's norm is about 0.1 here), Adam's first step about lr per coordinate of the LoRA
B matrices (A's gradient is 0 while B = 0): norm about 2e-3 x sqrt(230,400) = 1.0, which SGD
matches at lr 10, the SGD grid's middle."""
TUNING_SEED = 0


@dataclass(frozen=True)
class Profile:
    seeds: tuple[int, ...]
    divisions: int  # preference grid step 1/D: D + 1 points for M = 2
    overrides: tuple[str, ...]  # on top of the task
    steered: bool  # the steered fmgda / fedcmoo arms
    references: bool
    tune: bool


PROFILES = {
    "full": Profile(
        seeds=(0, 1, 2),
        divisions=4,
        overrides=(
            "federation.rounds=5",
            "algorithm.local_steps=1",
            "eval.num_prompts=32",
            "eval.samples_per_prompt=2",
            "model.compute_dtype=float32",  # the same numerics on every machine the run resumes on (bf16 is emulated, 4x slower, on some)
        ),
        steered=True,
        references=True,
        tune=True,
    ),
    "quick": Profile(
        seeds=(0, 1),
        divisions=2,
        overrides=("federation.rounds=2", "algorithm.local_steps=1", "eval.num_prompts=24", "eval.samples_per_prompt=2"),
        steered=False,
        references=False,
        tune=False,
    ),
}


@dataclass(frozen=True)
class Family:
    """An algorithm and its local optimizer; its arms share the learning rate chosen for it."""

    algorithm: str
    optimizer: str

    @property
    def grid(self) -> tuple[float, ...]:
        return ADAM_GRID if self.optimizer == "adam" else SGD_GRID

    @property
    def label(self) -> str:
        return self.algorithm if self.optimizer == "adam" else f"{self.algorithm}-{self.optimizer}"


FAMILIES = (Family("firm", "adam"), Family("fedavg", "adam"), Family("mgda", "adam"),
            Family("fmgda", "sgd"), Family("fedcmoo", "sgd"))  # fmt: skip


def arms(profile: Profile, lrs: dict[str, float]) -> list[Arm]:
    """The sweep's arms, each with its family's learning rate."""
    out = []
    for fam in FAMILIES:
        base = (f"algorithm.name={fam.algorithm}", f"algorithm.optimizer={fam.optimizer}", f"algorithm.lr={lrs[fam.label]}")
        out.append(Arm(fam.label, base))
        if profile.steered and fam.algorithm in ("fmgda", "fedcmoo"):
            out.append(Arm(f"{fam.algorithm}-steered-{fam.optimizer}", (*base, f"{fam.algorithm}.steering=true")))
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_point(config: Config, root: Path, name: str) -> dict[str, Any]:
    """One resumable run at `root/name` (firm.sweep.run_point: skipped when completed, else redone from its start)."""
    return run_point(
        dataclasses.replace(config, output=dataclasses.replace(config.output, dir=str(root), name=name, progress=False))
    )


def _guard(root: Path, key: dict[str, Any]) -> None:
    """Refuse a stage directory made with other settings; record the settings in a new one."""
    path = root / "stage.json"
    key = json.loads(json.dumps(key))  # tuples as lists, as read back
    if path.exists():
        if json.loads(path.read_text(encoding="utf-8")) != key:
            raise ConfigError(f"{root} was made with other settings; choose another --out")
        return
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")


def _uniform(config: Config) -> Config:
    m = config.num_objectives
    return dataclasses.replace(config, objectives=dataclasses.replace(config.objectives, preference=tuple([1.0 / m] * m)))


def _improvement(summary: dict[str, Any], beta_kl: float) -> float:
    """The tuning criterion: the KL-regularised objective every algorithm trains for, at p = uniform,
    as a gain over the base model: mean_m (final_m - initial_m) - beta_kl x final per-token KL.

    The KL term matters: a learning rate that collapses the policy onto one objective (replies cut
    to a word: conciseness up, helpfulness down, KL about 2) can raise the plain mean of the rewards."""
    first, last = summary["initial_eval"], summary["final_eval"]
    return sum(last[k] - first[k] for k in first) / len(first) - beta_kl * float(summary.get("final_kl") or 0.0)


def _share(items: list[Any], shard: tuple[int, int]) -> list[Any]:
    """Shard i of n: every n-th item from the i-th."""
    return items[shard[0] :: shard[1]]


def _tuning_key(task: Config, profile_name: str) -> dict[str, Any]:
    return json.loads(json.dumps({"task": config_delta(task), "profile": profile_name, "adam": ADAM_GRID, "sgd": SGD_GRID}))


def tune(task: Config, out: Path, profile_name: str, shard: tuple[int, int] = (0, 1)) -> dict[str, float] | None:
    """Stage 1: each family's lr, chosen on the validation split; writes tuning.json (a shard only runs its share)."""
    split = split_prompts(task)
    pool = out / "validation-pool.jsonl"
    rows = [{"prompt": p.text, "reference": p.reference, "topic": p.topic, "provocative": p.provocative}
            for client in split.clients for p in client]  # fmt: skip
    root = out / "tuning"
    _guard(root, _tuning_key(task, profile_name))
    if not pool.exists():
        pool.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    validation = dataclasses.replace(
        _uniform(task),
        data=dataclasses.replace(task.data, sources=(str(pool),)),
        federation=dataclasses.replace(task.federation, seed=TUNING_SEED),
    )
    points = [(fam, lr) for fam in FAMILIES for lr in fam.grid]
    scores: dict[str, dict[str, float]] = {}
    for fam, lr in _share(points, shard):
        arm = Arm(fam.label, (f"algorithm.name={fam.algorithm}", f"algorithm.optimizer={fam.optimizer}", f"algorithm.lr={lr}"))
        print(f"tuning {fam.label} lr={lr}", file=sys.stderr, flush=True)
        summary = _run_point(arm_config(validation, arm), root, f"{fam.label}-lr{lr:g}")
        scores.setdefault(fam.label, {})[repr(lr)] = _improvement(summary, task.algorithm.beta_kl)
    if shard[1] > 1:
        return None
    choice = {fam.label: max(fam.grid, key=lambda lr, f=fam: (scores[f.label][repr(lr)], -lr)) for fam in FAMILIES}  # type: ignore[misc]
    result = {
        "key": _tuning_key(task, profile_name),
        "criterion": f"mean over objectives of final - initial validation reward minus beta_kl ({task.algorithm.beta_kl}) "
        "x final per-token KL, at p = uniform, seed 0",
        "validation_prompts": task.eval.num_prompts,
        "pool_prompts": len(rows),
        "scores": scores,
        "chosen": choice,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (out / "tuning.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return choice


def references(task: Config, out: Path, profile: Profile, lr: float, shard: tuple[int, int] = (0, 1)) -> None:
    """Stage 3: centralized and local (FIRM's rule, FIRM's lr) at p = uniform, once per seed (a shard: its share)."""
    root = out / "references"
    _guard(root, {"task": config_delta(task), "seeds": list(profile.seeds), "lr": lr})
    points = [(seed, name) for seed in profile.seeds for name in ("centralized", "local")]
    for seed, name in _share(points, shard):
        arm = Arm(name, (f"algorithm.name={name}", "algorithm.reference_rule=firm", f"algorithm.lr={lr}"))
        config = arm_config(_uniform(task), arm)
        config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, seed=seed))
        print(f"reference {name} seed {seed}", file=sys.stderr, flush=True)
        _run_point(config, root, f"{name}-s{seed}")


def _workers(stage: str, jobs: int, argv: list[str]) -> None:
    """Run `stage` in `jobs` worker processes of this script (one compute thread each) and wait for them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, *argv, "--stage", stage, "--worker", f"{i}/{jobs}"], env=env)
             for i in range(jobs)]  # fmt: skip
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"evidence: a {stage} worker failed (exit codes {codes}); run the command again to resume")


STAGE_FILES = ("evidence.json", "tuning.json", "tuning/stage.json", "references/stage.json", "sweep/sweep.json")
"""The stages' plans, kept in the records archive beside the completed runs' files (firm.records.RUN_FILES)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the ~30-minute pipeline check (not evidence)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default runs/evidence or runs/evidence-quick)")
    parser.add_argument("--task", default="helpful-vs-concise", help="packaged task or config file")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes, one compute thread each (2 on a 2-core CPU)")
    parser.add_argument("--tuning", type=Path, help="a tuning.json of an earlier stage 1 (same task and profile): skip stage 1")
    parser.add_argument("--stages", default="tuning,sweep,references", help="which stages to run (comma-separated)")
    parser.add_argument(
        "--records",
        help="gzip JSON archive of the completed runs' small files, restored first and "
        'saved every 2 minutes (default docs/results/runs.json.gz for the full profile, none for --quick; "" for none)',
    )
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # worker mode: one stage's share
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # i/n
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="applied after the profile's (e.g. a smaller eval for a test)"
    )
    args = parser.parse_args()
    profile_name = "quick" if args.quick else "full"
    profile = PROFILES[profile_name]
    out: Path = args.out or Path("runs") / ("evidence-quick" if args.quick else "evidence")
    task = load_config(args.task, [*profile.overrides, *args.overrides])
    swept = dataclasses.replace(task, output=dataclasses.replace(task.output, dir=str(out), name="sweep"))
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:  # one share of one stage, for the parent's --jobs
        i, n = (int(v) for v in args.worker.split("/"))
        swept = dataclasses.replace(swept, output=dataclasses.replace(swept.output, progress=False))
        if args.stage == "tuning":
            tune(task, out, profile_name, (i, n))
        else:
            lrs = json.loads((out / "evidence.json").read_text(encoding="utf-8"))["learning_rates"]
            if args.stage == "sweep":
                sweep(swept, arms(profile, lrs), profile.divisions, list(profile.seeds), shard=(i, n))
            else:
                references(task, out, profile, lrs["firm"], (i, n))
        return 0
    stages = {s.strip() for s in args.stages.split(",")}
    default = None if args.quick else Path("docs/results/runs.json.gz")
    records = default if args.records is None else (Path(args.records) if args.records else None)  # "" = no archive
    records_key = {"profile": profile_name, "task": json.loads(json.dumps(config_delta(task)))}
    resume_from(out, records, records_key, "evidence")
    with RecordSaver(out, records, records_key, STAGE_FILES, label="evidence"):
        return _stages(args, profile_name, profile, task, swept, out, stages)


def _stages(
    args: argparse.Namespace, profile_name: str, profile: Profile, task: Config, swept: Config, out: Path, stages: set[str]
) -> int:
    """The parent's run of the stages (workers for each when --jobs > 1)."""
    passthrough: list[str] = []  # the command line without the parent's own options, for the workers
    skip = False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a in ("--jobs", "--stages", "--tuning"):
            skip = True
        elif not a.startswith(("--jobs=", "--stages=", "--tuning=")):
            passthrough.append(a)
    start = time.perf_counter()
    earlier = _read_json(out / "evidence.json").get("invocations", [])
    record = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "profile": profile_name,
              "settings": dataclasses.asdict(profile), "task": args.task, "jobs": args.jobs,
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": machine(), "invocations": earlier}  # fmt: skip
    print(json.dumps(record, indent=2), file=sys.stderr)
    if args.tuning is not None:
        tuned = json.loads(args.tuning.read_text(encoding="utf-8"))
        if tuned.get("key") != _tuning_key(task, profile_name):
            raise SystemExit(f"evidence: {args.tuning} was tuned for another task or profile")
        (out / "tuning.json").write_text(json.dumps(tuned, indent=2) + "\n", encoding="utf-8")
        lrs = tuned["chosen"]
    elif not profile.tune:
        lrs = {f.label: f.grid[len(f.grid) // 2] for f in FAMILIES}
    elif "tuning" in stages:
        if args.jobs > 1:
            _workers("tuning", args.jobs, passthrough)
        lrs = tune(task, out, profile_name) or {}
    else:
        lrs = json.loads((out / "tuning.json").read_text(encoding="utf-8"))["chosen"]
    record["learning_rates"] = lrs
    (out / "evidence.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if "sweep" in stages:
        if args.jobs > 1:
            _workers("sweep", args.jobs, passthrough)
        sweep(swept, arms(profile, lrs), profile.divisions, list(profile.seeds))
    if profile.references and "references" in stages:
        if args.jobs > 1:
            _workers("references", args.jobs, passthrough)
        references(task, out, profile, lrs["firm"])
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    this = {k: record[k] for k in ("started", "finished", "machine", "jobs")} | {"wall_time_s": time.perf_counter() - start}
    record["invocations"] = [*earlier, this]  # a run resumed in another checkout adds its own part
    record["wall_time_s"] = sum(i["wall_time_s"] for i in record["invocations"])
    (out / "evidence.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"done in {this['wall_time_s'] / 60:.1f} min; now: python benchmarks/results.py {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
