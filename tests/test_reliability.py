"""Reliability: failing and lagging clients, bad updates, robust aggregation, SIGKILL and resume, bad input.

Faults are injected with the in-process engine's `client_wrapper` (round, client, call) -> update,
so the real engine code (drop, validate, screen, aggregate) handles them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from firm.algorithms.protocol import ClientUpdate
from firm.checkpoint import CheckpointError
from firm.config import ConfigError
from firm.engines.inprocess import InProcessEngine
from firm.robust import Candidate as C
from firm.robust import RobustMean, RoundFailed, check_update, screen
from firm.train import resume, run
from firm.validation import load_config
from tests.conftest import TINY_MODEL, CliResult, firm_cli, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def engine_with(wrapper: Any) -> Any:
    def factory(policy, algorithm, objectives, prompts, config, communicate):  # type: ignore[no-untyped-def]
        return InProcessEngine(policy, algorithm, objectives, prompts.clients, config, communicate, client_wrapper=wrapper)

    return factory


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def global_at(run_dir: Path, round_idx: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"round_{round_idx:04d}" / "global.safetensors")


# --------------------------------------------------------------------------- unit checks


def test_check_update_names_what_is_wrong() -> None:
    ref = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert check_update([{"a": torch.ones(2, 3), "b": torch.ones(4)}], ref, 1) is None
    assert "2 payloads, expected 1" in str(check_update([ref, ref], ref, 1))
    assert "missing ['b']" in str(check_update([{"a": torch.ones(2, 3)}], ref, 1))
    assert "shape (3, 2)" in str(check_update([{"a": torch.ones(3, 2), "b": torch.ones(4)}], ref, 1))
    assert "dtype torch.float64" in str(check_update([{"a": torch.ones(2, 3).double(), "b": torch.ones(4)}], ref, 1))
    assert "NaN or Inf" in str(check_update([{"a": torch.ones(2, 3), "b": torch.tensor([1.0, float("inf"), 0, 0])}], ref, 1))


def test_norm_screen_rejects_outliers_against_the_round_median() -> None:
    ref = {"a": torch.zeros(10)}
    cands = [C(i, [{"a": torch.full((10,), 1.0 + 0.1 * i)}], 1.0) for i in range(4)] + [
        C(9, [{"a": torch.full((10,), 50.0)}], 1.0)
    ]
    passed, rejected = screen(cands, ref, 1, max_norm_ratio=10.0)
    assert [c.client_id for c in passed] == [0, 1, 2, 3] and list(rejected) == [9]
    assert "10 x the round's median" in rejected[9]
    assert len(screen(cands, ref, 1, max_norm_ratio=0.0)[0]) == 5  # 0 = off
    assert len(screen(cands[:1] + cands[-1:], ref, 1, max_norm_ratio=10.0)[0]) == 2  # fewer than 3 updates: no median


def test_robust_rules_on_known_values() -> None:
    deltas = [
        torch.tensor([1.0, -2.0]),
        torch.tensor([2.0, 0.0]),
        torch.tensor([3.0, 2.0]),
        torch.tensor([4.0, 4.0]),
        torch.tensor([1000.0, -1000.0]),
    ]
    med, trim, clip = RobustMean("median"), RobustMean("trimmed_mean", trim=0.2), RobustMean("mean", clip_norm=1.0)
    for d in deltas:
        for agg in (med, trim, clip):
            agg.add({"x": d}, 1.0)
    assert torch.allclose(med.mean()["x"], torch.tensor([3.0, 0.0], dtype=torch.float64))
    assert torch.allclose(trim.mean()["x"], torch.tensor([3.0, 0.0], dtype=torch.float64))  # drops 1 at each end
    assert clip.clipped == 5 and all(float(torch.linalg.norm(d["x"])) <= 1.0 + 1e-6 for d in clip.deltas)
    even = RobustMean("median")
    for v in (1.0, 2.0, 3.0, 10.0):
        even.add({"x": torch.tensor([v])}, 1.0)
    assert float(even.mean()["x"]) == 2.5


# --------------------------------------------------------------------------- fault injection


def test_random_exceptions_and_timeouts_at_30_percent_over_10_rounds(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    injected: dict[tuple[int, int], str] = {}
    survivors: dict[int, dict[int, ClientUpdate]] = {}

    def wrapper(round_idx: int, client_id: int, call: Any) -> ClientUpdate | None:
        draw = rng.random()
        if draw < 0.10:
            injected[(round_idx, client_id)] = "raised"
            raise RuntimeError("injected crash")
        if draw < 0.20:
            injected[(round_idx, client_id)] = "timeout"
            time.sleep(1.05)  # over client_timeout before the first local step
        if draw < 0.30 and (round_idx, client_id) not in injected:
            injected[(round_idx, client_id)] = "nothing"
            return None
        update = call()
        survivors.setdefault(round_idx, {})[client_id] = update
        return update

    config = tiny_config(
        tmp_path,
        "federation.num_clients=4",
        "federation.clients_per_round=3",
        "federation.rounds=10",
        "federation.min_clients=1",
        "federation.client_timeout=1.0",  # an honest client takes ~0.1 s; 0.3 s dropped some on a busy machine
        "algorithm=fedavg",
        "eval.every=5",
        "output.name=faults",
    )
    result = run(config, engine=engine_with(wrapper))
    assert result.summary["status"] == "completed"
    metrics = rows(result.run_dir)
    assert [r["round"] for r in metrics] == list(range(1, 11))
    total_dropped = 0
    for row in metrics:
        r = row["round"]
        expected = {c: why for (rr, c), why in injected.items() if rr == r}
        assert {int(c) for c in row["dropped"]} == set(expected), (r, row["dropped"], expected)
        for c, why in expected.items():
            text = row["dropped"][str(c)]
            assert {"raised": "injected crash", "timeout": "client_timeout", "nothing": "returned no update"}[why] in text
        total_dropped += len(expected)
        kept = survivors.get(r, {})
        assert sorted(int(c) for c in row["weights"]) == sorted(kept)  # the logs show exactly the survivors
        # the new global adapter is the previous one plus the sample-weighted mean of exactly the survivors' deltas
        before = global_at(result.run_dir, r - 1) if r > 1 else None
        after = global_at(result.run_dir, r)
        if before is not None and kept:
            total = sum(u.num_samples for u in kept.values())
            for name in after:
                mean = sum(u.num_samples * u.uploads[0][name].double() for u in kept.values()) / total
                assert torch.allclose(after[name].double(), before[name].double() + mean, atol=1e-6)
    assert 0.15 < total_dropped / 30 < 0.45  # about 30 % of the 30 client-rounds were faulty
    assert {"raised", "timeout", "nothing"} <= set(injected.values())


def test_too_few_clients_retries_then_stops_with_a_clear_error_and_keeps_state(tmp_path: Path) -> None:
    calls: list[int] = []

    def wrapper(round_idx: int, client_id: int, call: Any) -> ClientUpdate | None:
        if round_idx == 3:
            calls.append(client_id)
            raise RuntimeError("site offline")
        return call()  # type: ignore[no-any-return]

    config = tiny_config(tmp_path, "federation.rounds=4", "federation.round_retries=2", "output.name=few")
    with pytest.raises(RoundFailed, match=r"round 3 \(train\): 0 of 2 sampled clients.*site offline"):
        run(config, engine=engine_with(wrapper))
    run_dir = tmp_path / "few"
    assert len(calls) == 2 * 3  # the round was tried 1 + 2 times
    assert [r["round"] for r in rows(run_dir)] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds_completed"] == 2
    assert (run_dir / "checkpoints" / "round_0002" / "global.safetensors").is_file()


@pytest.mark.parametrize("where", ["after the row", "during the state copy"])
def test_ctrl_c_right_after_a_rounds_row_checkpoints_that_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """SIGINT lands the moment round 2's row is on disk (what test_ctrl_c_saves_the_last_completed_round's
    poll hits when the run is quick), or while the round's client states are copied: the checkpoint is
    round 2, whole (a round half committed once saved round 2's label on round 1's states)."""
    import copy

    from firm.rundir import RunDir

    append, deepcopy = RunDir.append_metrics, copy.deepcopy
    armed: list[bool] = []

    def append_then_interrupt(self: RunDir, row: dict[str, Any]) -> None:
        append(self, row)
        if row["round"] == 2 and where == "after the row":
            os.kill(os.getpid(), signal.SIGINT)  # delivered at the next bytecode: right after the row
        armed.append(row["round"] == 2 and where == "during the state copy")

    def copy_then_interrupt(value: Any, memo: Any = None) -> Any:
        out = deepcopy(value, memo)
        if armed and armed[-1]:  # the first copy after round 2's row: the round's client states
            armed.append(False)
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(RunDir, "append_metrics", append_then_interrupt)
    monkeypatch.setattr("firm.train.copy.deepcopy", copy_then_interrupt)
    # fedcmoo: a server state (its warm-start weights) that round 2 changes, so a checkpoint mixing rounds shows
    setup = ["federation.rounds=3", "output.checkpoint_every=100", "algorithm.name=fedcmoo"]
    config = tiny_config(tmp_path, *setup, "output.name=sig")
    with pytest.raises(KeyboardInterrupt):
        run(config)
    run_dir = tmp_path / "sig"
    assert [r["round"] for r in rows(run_dir)] == [1, 2]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["round_0002"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_completed"] == 2
    monkeypatch.undo()
    kept = tmp_path / "round_0002"  # resume writes further checkpoints: keep the interrupted one to compare
    shutil.copytree(run_dir / "checkpoints" / "round_0002", kept)
    # the checkpoint is round 2's whole state: resuming gives the uninterrupted run's adapter
    resumed = resume(run_dir)
    whole = run(tiny_config(tmp_path, *setup, "output.checkpoint_every=1", "output.name=whole"))
    assert [r["round"] for r in rows(run_dir)] == [1, 2, 3]
    for name in ("global.safetensors", "state.safetensors", "state.json"):  # round 2's state, bit for bit
        ours = (kept / name).read_bytes()
        assert ours == (tmp_path / "whole" / "checkpoints" / "round_0002" / name).read_bytes(), name
    for name, tensor in whole.final_adapter.items():
        assert torch.equal(resumed.final_adapter[name], tensor), name


def test_nan_updates_are_never_averaged(tmp_path: Path) -> None:
    def wrapper(round_idx: int, client_id: int, call: Any) -> ClientUpdate:
        update: ClientUpdate = call()
        if client_id == 1:
            update.uploads = [{n: torch.full_like(t, float("nan")) for n, t in u.items()} for u in update.uploads]
        return update

    config = tiny_config(tmp_path, "federation.min_clients=1", "output.name=nan-updates")
    result = run(config, engine=engine_with(wrapper))
    assert all(torch.isfinite(t).all() for t in result.final_adapter.values())
    for row in rows(result.run_dir):
        assert "NaN or Inf" in row["dropped"]["1"] and list(row["weights"]) == ["0"]


ATTACK = [
    "federation.num_clients=5",
    "federation.clients_per_round=5",
    "federation.rounds=1",  # one round: the honest clients' deltas are identical in the clean and attacked runs
    "aggregation.max_norm_ratio=0",  # let the update through the norm screen: the rule alone must cope
    "algorithm=fedavg",
    "algorithm.lr=0.02",
    "eval.num_prompts=8",
    "eval.samples_per_prompt=4",
]


def _attacked(round_idx: int, client_id: int, call: Any) -> ClientUpdate:
    update: ClientUpdate = call()
    if client_id == 4:  # 1 of 5 clients sends its delta sign-flipped and scaled by 20
        update.uploads = [{n: -20.0 * t for n, t in u.items()} for u in update.uploads]
    return update


def test_median_and_trimmed_mean_withstand_one_bad_client_of_five_and_the_mean_does_not(tmp_path: Path) -> None:
    """Each rule, clean vs attacked: how far one bad client moves the final adapter and the eval reward.

    Distance = ||theta_attacked - theta_clean|| / mean_i ||Delta_i|| (the attack's error in units of
    an honest client's delta: the clients' noisy RL deltas largely cancel in the aggregate, so the
    aggregate's own norm is no yardstick). One round, so the four honest clients send the same
    deltas in both runs and the distance is the aggregation's doing alone (over more rounds the
    sampled rollouts diverge and any change compounds). On the tiny random model the eval rewards
    hardly react to the adapter, so the visible failure is measured on the adapter; the reward
    tolerance is checked for the robust rules.
    """
    norms: list[float] = []

    def record(round_idx: int, client_id: int, call: Any) -> ClientUpdate:
        update: ClientUpdate = call()
        norms.append(sum(float(t.double().pow(2).sum()) for t in update.uploads[0].values()) ** 0.5)
        return update

    figures = {}
    for rule in ("mean", "median", "trimmed_mean"):
        clean = run(
            tiny_config(tmp_path, *ATTACK, f"aggregation.rule={rule}", f"output.name=clean-{rule}"), engine=engine_with(record)
        )
        attacked = run(
            tiny_config(tmp_path, *ATTACK, f"aggregation.rule={rule}", f"output.name=attacked-{rule}"),
            engine=engine_with(_attacked),
        )
        theta0 = clean.final_adapter
        progress = sum(norms) / len(norms)  # a client's typical delta norm
        error = (
            sum(float((attacked.final_adapter[n].double() - clean.final_adapter[n].double()).pow(2).sum()) for n in theta0) ** 0.5
        )
        gap = max(abs(attacked.summary["final_eval"][k] - clean.summary["final_eval"][k]) for k in clean.summary["final_eval"])
        figures[rule] = {
            "distance": round(error / progress, 4),
            "reward_gap": round(gap, 4),
            "kl": round(attacked.summary["final_kl"], 4),
        }
    print("one sign-flipped x20 client of 5, per rule:", figures)
    for rule in ("median", "trimmed_mean"):
        assert figures[rule]["distance"] < 1.25, figures  # bounded by the honest clients' spread, not the attacker's size
        assert figures[rule]["reward_gap"] <= 0.05, figures  # stated tolerance on the final eval reward
    assert figures["mean"]["distance"] > 3.0, figures  # plain averaging: moved by several honest deltas (21/5 x one)
    assert figures["mean"]["distance"] > 2.5 * max(figures["median"]["distance"], figures["trimmed_mean"]["distance"]), figures


def _initial_adapter() -> dict[str, torch.Tensor]:
    from firm.config import LoraConfig
    from firm.policy import build_policy

    return build_policy(TINY_MODEL, LoraConfig(), seed=0).get_adapter()


def test_the_norm_screen_alone_stops_a_scaled_update_with_plain_averaging(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, *ATTACK, "aggregation.max_norm_ratio=10", "federation.min_clients=4", "output.name=screened")
    result = run(config, engine=engine_with(_attacked))
    for row in rows(result.run_dir):
        assert "x the round's median" in row["dropped"]["4"]
        assert sorted(row["weights"]) == ["0", "1", "2", "3"]


# --------------------------------------------------------------------------- SIGKILL and resume


def _cli(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "firm", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs
    )


KILL_RUN = [
    "model.name=tiny",
    'objectives.names=["positiveness", "conciseness"]',
    'data.sources=["builtin"]',
    "data.partition=iid",
    "data.provocative_ratios=[]",
    "federation.num_clients=3",
    "federation.clients_per_round=2",
    "federation.rounds=4",
    "rollout.prompts_per_step=4",
    "rollout.max_new_tokens=24",
    "eval.num_prompts=4",
    "output.progress=false",
]


class _ForkedCli:
    """`firm <args>` in a forked child of the test process, its stderr in a file.

    A real process to SIGKILL and to resume, running `firm.cli.main` as `python -m firm` does,
    without the ~5 s each new interpreter spends importing torch, transformers and peft (the
    SIGKILL test starts up to 11 of them; that import was most of its time).
    """

    def __init__(self, stderr: Path, *args: str) -> None:
        self.stderr = stderr

        def child() -> None:
            for fd, path in ((1, os.devnull), (2, str(stderr))):
                opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(opened, fd)
                os.close(opened)
            # Past pytest's capture, onto the redirected descriptors; open until the child exits (also
            # for multiprocessing's report of an uncaught exception: a Traceback in the file).
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            from firm.cli import main

            sys.exit(main(list(args)))

        self.process = multiprocessing.get_context("fork").Process(target=child, daemon=True)
        self.process.start()

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(timeout=60)

    def wait(self, timeout: float) -> int | None:
        self.process.join(timeout=timeout)
        return self.process.exitcode

    def errors(self) -> str:
        return self.stderr.read_text()[-2000:] if self.stderr.exists() else ""


def _wait_for(path: Path, proc: _ForkedCli, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.alive() and time.monotonic() < deadline, f"{path} never appeared: {proc.errors()}"
        time.sleep(0.01)
    return time.monotonic()


def test_sigkill_at_five_random_points_then_resume_gives_the_uninterrupted_adapter(tmp_path: Path) -> None:
    """Kill points are uniform over the training: from the moment the run directory exists to the final adapter."""
    logs = tmp_path / "logs"
    logs.mkdir()
    ref = _ForkedCli(logs / "reference.err", "train", *KILL_RUN, f'output.dir="{tmp_path}"', "output.name=reference")
    born = _wait_for(tmp_path / "reference" / "config.toml", ref)
    span = _wait_for(tmp_path / "reference" / "final_adapter", ref) - born  # the training part of the run
    assert ref.wait(timeout=300) == 0, ref.errors()
    reference = (tmp_path / "reference" / "final_adapter" / "adapter_model.safetensors").read_bytes()
    rng = np.random.default_rng(2026)
    for i, delay in enumerate(sorted(float(t) for t in rng.uniform(0.0, span, size=5))):
        name = f"killed{i}"
        proc = _ForkedCli(logs / f"{name}.err", "train", *KILL_RUN, f'output.dir="{tmp_path}"', f"output.name={name}")
        run_dir = tmp_path / name
        _wait_for(run_dir / "config.toml", proc)
        time.sleep(delay)
        proc.kill()
        done = len(rows(run_dir)) if (run_dir / "metrics.jsonl").exists() else 0
        where = f"kill {delay:.2f} s into the run (after {done} rounds)"
        summary = run_dir / "summary.json"
        if not (
            summary.exists() and json.loads(summary.read_text())["status"] == "completed"
        ):  # else: killed while writing the report
            again = _ForkedCli(logs / f"{name}-resume.err", "train", "--resume", str(run_dir))
            assert again.wait(timeout=300) == 0, where + ": " + again.errors()
        final = (run_dir / "final_adapter" / "adapter_model.safetensors").read_bytes()
        assert final == reference, f"{where}: the resumed adapter differs"
        assert [r["round"] for r in rows(run_dir)] == list(range(1, 5)), where
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
        print(where, "-> resumed, same adapter")


def test_resume_in_process_continues_from_the_checkpoint_and_matches(tmp_path: Path) -> None:
    full = run(tiny_config(tmp_path, "federation.rounds=3", "output.name=full"))
    part_dir = tmp_path / "part"
    run(tiny_config(tmp_path, "federation.rounds=3", "output.name=part"))
    # pretend the run died after round 2 had written its metrics row but before its checkpoint
    for d in ("final_adapter", "checkpoints/round_0003", "checkpoints/round_0002"):
        shutil.rmtree(part_dir / d)
    (part_dir / "summary.json").unlink()
    result = resume(part_dir)
    assert [r["round"] for r in rows(part_dir)] == [1, 2, 3]
    assert result.summary["resumed_from_round"] == 1
    for name, t in full.final_adapter.items():
        assert torch.equal(t, result.final_adapter[name])
    with pytest.raises(Exception, match="already completed"):
        resume(part_dir)


# --------------------------------------------------------------------------- bad input


def _firm(*args: str) -> CliResult:
    return firm_cli(*args)


def test_config_syntax_errors_give_line_numbers(tmp_path: Path) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[federation]\nrounds = 3\nseed = = 4\n")
    with pytest.raises(ConfigError, match=r"line 3"):
        load_config(bad_toml)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("federation:\n  rounds: 3\n seed: [4\n")
    with pytest.raises(ConfigError, match=r"line \d"):
        load_config(bad_yaml)
    out = _firm("train", "--config", str(bad_toml))
    assert out.returncode == 2 and "line 3" in out.stderr and "Traceback" not in out.stderr


def test_bad_prompt_file_line_is_named(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello there"}\n{"prompt": 3}\n')
    out = _firm("train", *KILL_RUN, f'data.sources=["{prompts}"]', f'output.dir="{tmp_path}"')
    assert out.returncode == 2 and f"{prompts}:2" in out.stderr and "Traceback" not in out.stderr


def test_corrupt_or_mismatched_checkpoint_is_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    run(tiny_config(tmp_path, "federation.rounds=2", "output.name=r"))
    run_dir = tmp_path / "r"
    (run_dir / "summary.json").unlink()  # as after a crash
    (run_dir / "final_adapter" / "adapter_model.safetensors").unlink()
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    ckpt = run_dir / "checkpoints" / "round_0002"
    good = (ckpt / "global.safetensors").read_bytes()
    (ckpt / "global.safetensors").write_bytes(good[: len(good) // 2])
    out = _firm("train", "--resume", str(run_dir))
    assert out.returncode == 2 and "global.safetensors: unreadable" in out.stderr and "Traceback" not in out.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before
    (ckpt / "global.safetensors").write_bytes(good)
    config_text = (run_dir / "config.toml").read_text()
    (run_dir / "config.toml").write_text(config_text.replace("r = 8", "r = 4"))
    with pytest.raises(CheckpointError, match=r"expects torch.float32 \(4, .*different lora.r"):
        resume(run_dir)
    (run_dir / "config.toml").write_text(config_text.replace("seed = 0", "seed = 5"))
    with pytest.raises(CheckpointError, match="written with seed 0, but the run's config says 5"):
        resume(run_dir)
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before
    out = _firm("train", "--resume", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "not a run directory" in out.stderr


def test_broken_objective_stops_the_run_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "broken_rewards.py"
    module.write_text(
        "def too_few(prompts, completions, **kw):\n    return [0.5]\n\ndef nan(prompts, completions, **kw):\n    return [float('nan')] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # what PYTHONPATH gave a `python -m firm` process
    # A new process imports this file; test_robustness.py imports another `broken_rewards` (only `bad`) in this one.
    sys.modules.pop("broken_rewards", None)
    try:
        for name, message in (("too_few", "returned 1 rewards for"), ("nan", "returned NaN or Inf")):
            out = firm_cli(
                "train", *KILL_RUN, f'objectives.names=["positiveness", "broken_rewards:{name}"]', f'output.dir="{tmp_path}"'
            )
            assert out.returncode == 1, out.stderr[-1500:]
            assert f"objective 'broken_rewards:{name}' {message}" in out.stderr and "Traceback" not in out.stderr
    finally:
        sys.modules.pop("broken_rewards", None)


def test_ctrl_c_saves_the_last_completed_round(tmp_path: Path) -> None:
    # 8 rounds: the run is still going when the signal lands after its first row (~1 s a round, polled every 50 ms).
    # SIGINT back to its default in the child: an ignored SIGINT (SIG_IGN) is inherited across exec,
    # and a process the suite started earlier may have left it ignored in this one.
    proc = _cli(
        "train", *KILL_RUN, "federation.rounds=8", "output.checkpoint_every=100", f'output.dir="{tmp_path}"', "output.name=ctrlc",
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    run_dir = tmp_path / "ctrlc"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ((run_dir / "metrics.jsonl").exists() and rows(run_dir)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert f"firm train --resume {run_dir}" in stderr and "Traceback" not in stderr
    done = [r["round"] for r in rows(run_dir)]
    assert (run_dir / "checkpoints" / f"round_{done[-1]:04d}").is_dir()  # saved although checkpoint_every=100
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert resume(run_dir).summary["status"] == "completed"
    assert [r["round"] for r in rows(run_dir)] == list(range(1, 9))
