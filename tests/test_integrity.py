"""Integrity fixes of issue 14, each a test that failed on the code before its fix.

Resume after an interruption between checkpoints, random streams that never coincide, seeded
LoRA dropout, FedCMOO retries from the last completed round, a truncated metrics row, directory
swaps that never lose both copies, and sample counts the server does not take on trust.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import firm.client
import firm.data
import firm.train
from firm.algorithms.protocol import ClientUpdate
from firm.engines.inprocess import InProcessEngine
from firm.rundir import replace_dir_atomic
from firm.seeding import derive_seed
from firm.train import resume, run
from tests.conftest import TINY_MODEL, tiny_config


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def _engine_with(wrapper: Any) -> Any:
    def factory(policy, algorithm, objectives, prompts, config, communicate):  # type: ignore[no-untyped-def]
        return InProcessEngine(policy, algorithm, objectives, prompts.clients, config, communicate, client_wrapper=wrapper)

    return factory


# --------------------------------------------------------------------------- 1. a round applied twice


@pytest.mark.parametrize("algorithm", ["firm", "fedcmoo"])
def test_interrupt_in_an_evaluation_between_checkpoints_then_resume_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    """Killed inside round 2's evaluation (checkpoints every 3 rounds): the resumed run ends as the uninterrupted one.

    Before the fix, the saved 'round 1' checkpoint held round 2's adapter (and FedCMOO's round-2
    warm start), and resume ran round 2 again on top of itself.
    """
    args = ["federation.rounds=4", "output.checkpoint_every=3", "eval.every=1", f"algorithm.name={algorithm}"]
    full = run(tiny_config(tmp_path, *args, "output.name=full"))

    real_evaluate = firm.train.evaluate
    calls = {"n": 0}

    def evaluate_then_interrupt(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # initial, round 1, then round 2's evaluation
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(firm.train, "evaluate", evaluate_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tmp_path, *args, "output.name=part"))
    monkeypatch.setattr(firm.train, "evaluate", real_evaluate)
    part = tmp_path / "part"
    assert [r["round"] for r in _rows(part)] == [1]
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["round_0001"]
    result = resume(part)
    assert result.summary["resumed_from_round"] == 1
    assert [r["round"] for r in _rows(part)] == [1, 2, 3, 4]
    assert _same(full.final_adapter, result.final_adapter)
    assert [r["eval"] for r in _rows(part)] == [r["eval"] for r in full.metrics]
    if algorithm == "fedcmoo":
        assert [r["server"]["plan"] for r in _rows(part)] == [r["server"]["plan"] for r in full.metrics]


# --------------------------------------------------------------------------- 2. random streams


class _SeedLog:
    """Records every seed the library derives, under the purpose the test says is drawing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *modules: Any) -> None:
        self.purposes: dict[int, set[str]] = {}
        self.label = ""
        for module in modules:
            for fn_name in ("numpy_rng", "torch_generator"):
                if hasattr(module, fn_name):
                    monkeypatch.setattr(module, fn_name, self._wrap(getattr(module, fn_name), fn_name))

    def _wrap(self, original: Any, fn_name: str) -> Any:
        def recorded(*args: Any) -> Any:
            keys = args[1:] if fn_name == "torch_generator" else args
            self.purposes.setdefault(derive_seed(*keys), set()).add(self.label)
            return original(*args)

        return recorded

    def shared(self) -> dict[int, set[str]]:
        return {s: p for s, p in self.purposes.items() if len(p) > 1}


def test_the_streams_the_code_draws_from_never_coincide_across_purposes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Client sampling of rounds 1..20 and the partition's sub-streams, as the library derives them, never share
    a seed. Before the fix, round 5's client sampling drew from the partition's stream, (seed, 5, 1) both."""
    from firm.config import DataConfig
    from firm.data import federated_prompts

    log = _SeedLog(monkeypatch, firm.client, firm.data)
    log.label = "partition"
    federated_prompts(DataConfig(sources=("builtin",), partition="dirichlet", provocative_ratios=()), 4, 4, 0)
    log.label = "client sampling"
    for round_idx in range(1, 21):
        firm.client.sample_clients(0, round_idx, 8, 2)
    assert len(log.purposes) >= 21
    assert not log.shared()


def test_no_two_purposes_share_a_random_stream() -> None:
    """Every purpose's stream over a range of rounds, clients, steps and sub-streams: all seeds distinct, and a
    purpose's seeds never reappear under another purpose whatever the other keys are."""
    from firm.seeding import Stream

    seeds: dict[int, tuple[Any, ...]] = {}
    for seed in (0, 1, 5):
        keys: list[tuple[Any, ...]] = []
        for round_idx in range(0, 13):
            keys.append((Stream.CLIENT_SAMPLING, seed, round_idx))
            for client_id in range(8):
                for step in (0, 1, 2, 3, 1_000_000):
                    for stream in (Stream.PROMPT_BATCH, Stream.ROLLOUT, Stream.DROPOUT):
                        keys.append((stream, seed, round_idx, client_id, step))
        for sub in range(8):
            keys += [(Stream.EVAL, seed, sub), (Stream.PARTITION, seed, sub)]
            keys += [(Stream.PALETTE, seed, sub, c) for c in range(8)]
        for k in keys:
            value = derive_seed(*k)
            assert value not in seeds, f"{k} and {seeds[value]} share a stream"
            seeds[value] = k
    assert len(seeds) > 3 * 13 * 8 * 5 * 3


# --------------------------------------------------------------------------- 3. seeded LoRA dropout


def test_lora_dropout_is_reproduced_by_the_run_seed_alone(tmp_path: Path) -> None:
    """With lora.dropout > 0, whatever the global RNG holds, one seed gives one adapter (before: the masks came from it)."""
    adapters = []
    for i, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)
        result = run(tiny_config(tmp_path, "lora.dropout=0.3", "federation.rounds=1", f"output.name=d{i}"))
        adapters.append(result.final_adapter)
    assert _same(adapters[0], adapters[1])
    no_dropout = run(tiny_config(tmp_path, "federation.rounds=1", "output.name=d_off")).final_adapter
    assert not _same(adapters[0], no_dropout)  # the dropout is really on


def test_seeded_dropout_leaves_the_callers_global_rng_alone(tiny_policy: Any) -> None:
    from firm.config import LoraConfig
    from firm.policy import build_policy

    policy = build_policy(TINY_MODEL, LoraConfig(dropout=0.5), seed=0)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    ids = torch.randint(0, 100, (1, 6))
    torch.manual_seed(7)
    with policy.lora_dropout(seed=123):
        first = policy.model(input_ids=ids).logits
    after = torch.rand(3)
    assert torch.equal(after, expected)
    with policy.lora_dropout(seed=123):
        second = policy.model(input_ids=ids).logits
    assert torch.equal(first, second)


# --------------------------------------------------------------------------- 5. FedCMOO retries


def test_fedcmoo_retry_starts_from_the_last_completed_rounds_warm_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round whose training phase fails once is retried from the last round's server weights, so it ends as if
    it had not failed (before: the failed attempt's plan was the warm start of the retry). One projected-gradient
    iteration per plan makes the plan depend on its warm start (at 50 the tiny problem converges from anywhere)."""
    import firm.algorithms.fedcmoo

    monkeypatch.setattr(firm.algorithms.fedcmoo, "PG_ITERATIONS", 1)
    args = ["algorithm.name=fedcmoo", "federation.rounds=3", "federation.round_retries=1"]
    full = run(tiny_config(tmp_path, *args, "output.name=full"))
    failed = {"done": False}

    def fail_round_2_training_once(round_idx: int, client_id: int, call: Any) -> ClientUpdate:
        is_training = getattr(call, "func", None).__name__ == "client_update"  # type: ignore[union-attr]
        if round_idx == 2 and is_training and not failed["done"]:
            failed["done"] = True
            raise RuntimeError("injected failure")
        return call()

    retried = run(tiny_config(tmp_path, *args, "output.name=retried"), engine=_engine_with(fail_round_2_training_once))
    assert failed["done"] and retried.metrics[1]["attempts"] == 2
    assert [r["server"]["plan"] for r in retried.metrics] == [r["server"]["plan"] for r in full.metrics]
    assert _same(full.final_adapter, retried.final_adapter)


# --------------------------------------------------------------------------- 6. truncated rows, directory swaps


def test_a_truncated_last_metrics_row_is_dropped_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A crash mid-append leaves half a row: resume drops it, says so, and ends as the uninterrupted run."""
    full = run(tiny_config(tmp_path, "federation.rounds=3", "output.name=full"))
    run(tiny_config(tmp_path, "federation.rounds=3", "output.name=part"))
    part = tmp_path / "part"
    shutil.rmtree(part / "final_adapter")
    shutil.rmtree(part / "checkpoints" / "round_0003")
    (part / "summary.json").unlink()
    lines = (part / "metrics.jsonl").read_text().splitlines(keepends=True)
    (part / "metrics.jsonl").write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    capsys.readouterr()
    result = resume(part)
    assert "dropping an incomplete last row" in capsys.readouterr().err
    assert [r["round"] for r in _rows(part)] == [1, 2, 3]
    assert _same(full.final_adapter, result.final_adapter)


def test_a_corrupt_row_in_the_middle_still_stops_resume(tmp_path: Path) -> None:
    from firm.rundir import RunDirError

    run(tiny_config(tmp_path, "federation.rounds=2", "output.name=part", "output.checkpoint_every=1"))
    part = tmp_path / "part"
    (part / "summary.json").unlink()
    lines = (part / "metrics.jsonl").read_text().splitlines(keepends=True)
    (part / "metrics.jsonl").write_text("{not json\n" + "".join(lines[1:]))
    with pytest.raises(RunDirError, match=r"metrics.jsonl:1: not a JSON row"):
        resume(part)


def _fill(text: str) -> Any:
    def fill(directory: Path) -> None:
        (directory / "a.txt").write_text(text)

    return fill


def test_replacing_a_directory_keeps_the_old_one_if_the_swap_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix the old directory was deleted before the new one was renamed in: a failure there lost both."""
    target = tmp_path / "final_adapter"
    replace_dir_atomic(target, _fill("old"))
    real_replace = os.replace

    def replace_fails_for_the_new_one(src: Any, dst: Any) -> None:
        if Path(dst) == target and Path(src).name.startswith(".final_adapter.") and "replaced" not in Path(src).name:
            raise OSError("disk gone")  # renaming the new directory in fails; putting the old one back works
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_fails_for_the_new_one)
    with pytest.raises(OSError, match="disk gone"):
        replace_dir_atomic(target, _fill("new"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_adapter"]
    replace_dir_atomic(target, _fill("new"))
    assert (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_adapter"]


def test_a_crash_between_the_two_renames_is_recovered(tmp_path: Path) -> None:
    """A process killed between moving the old directory aside and renaming the new one in: the old one comes back."""
    target = tmp_path / "checkpoints" / "round_0002"
    replace_dir_atomic(target, _fill("old"))
    pid = os.fork()
    if pid == 0:  # the child dies at the worst moment, with no chance to clean up
        real_replace = os.replace

        def die_before_the_second_rename(src: Any, dst: Any) -> None:
            if Path(dst) == target:
                os._exit(9)
            real_replace(src, dst)

        os.replace = die_before_the_second_rename  # type: ignore[assignment]
        try:
            replace_dir_atomic(target, _fill("new"))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    assert not target.exists()  # the crash window: only the aside copy holds the old checkpoint
    from firm.rundir import recover_replaced

    assert recover_replaced(target)
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.startswith(".round_0002.")) == ["round_0002"]


def test_latest_checkpoint_puts_back_a_checkpoint_caught_mid_swap(tmp_path: Path) -> None:
    from firm.checkpoint import latest

    root = tmp_path / "run" / "checkpoints"
    for r in (1, 2):
        replace_dir_atomic(root / f"round_{r:04d}", _fill(str(r)))
    (root / "round_0002").rename(root / ".round_0002.replaced.x1y2")  # as the crash leaves it
    assert latest(tmp_path / "run") == root / "round_0002"
    assert (root / "round_0002" / "a.txt").read_text() == "2"


# --------------------------------------------------------------------------- 7. sample counts


def test_a_client_claiming_more_samples_than_asked_is_rejected(tmp_path: Path) -> None:
    """The sample count is the aggregation weight: a client claiming 1e12 would own the mean; the server rejects it."""

    def inflate(round_idx: int, client_id: int, call: Any) -> ClientUpdate:
        update = call()
        if client_id == 0:
            update.num_samples = 10**12
        return update

    args = ["federation.num_clients=3", "federation.clients_per_round=3", "federation.min_clients=2", "federation.rounds=1"]
    result = run(tiny_config(tmp_path, *args, "output.name=inflated"), engine=_engine_with(inflate))
    (row,) = result.metrics
    assert "0" in row["dropped"] and "reports 1e+12 samples" in row["dropped"]["0"]
    assert "asked for 16" in row["dropped"]["0"]  # K x B x G = 2 x 2 x 4
    assert sorted(row["weights"]) == ["1", "2"]


def test_a_fedcmoo_probe_with_a_wrong_sample_count_is_rejected(tmp_path: Path) -> None:
    def inflate_probe(round_idx: int, client_id: int, call: Any) -> ClientUpdate:
        update = call()
        if client_id == 1 and getattr(call, "func", None).__name__ == "client_probe":  # type: ignore[union-attr]
            update.num_samples = 10**6
        return update

    args = ["algorithm.name=fedcmoo", "federation.num_clients=3", "federation.clients_per_round=3"]
    args += ["federation.min_clients=2", "federation.rounds=1"]
    result = run(tiny_config(tmp_path, *args, "output.name=probe"), engine=_engine_with(inflate_probe))
    (row,) = result.metrics
    assert "reports 1e+06 samples" in row["dropped"]["1"] and "asked for 8" in row["dropped"]["1"]


def test_honest_clients_are_never_rejected_for_their_counts(tmp_path: Path) -> None:
    for algorithm in ("fedavg", "fmgda", "fedcmoo"):
        result = run(tiny_config(tmp_path, f"algorithm.name={algorithm}", "federation.rounds=1", f"output.name={algorithm}"))
        assert result.metrics[0]["dropped"] == {}, algorithm
