"""Pinned figures of the tiny end-to-end FIRM run at seed 0, so that a refactor which changes the numbers is caught.

The values were recorded from commit 261147b (2026-12-02, this project's 2-core x86_64 CI machine,
torch 2.13.0 CPU). The run is deterministic on one machine: every random draw comes from a seeded
stream (firm.seeding). Tolerance 1e-6 (absolute): a change to the math moves these by far more
(one flipped sampled token moves a mean reward by about 1e-2, a changed weighting rule moves the
weights by 1e-3 or more); float sums that are merely reordered stay below it. On another CPU or
torch build the kernels can round differently, a sampled token can flip, and these values with
it: there, re-record them from an unchanged checkout before refactoring. The eval rewards of the
tiny random model hardly react to its adapter (both rounds give the same means), so the adapter's
norm, FIRM's weights, the KL and the training rewards are pinned too.

Re-recorded once, on purpose: the eval figures (and the eval KL) after issue 17's common random
numbers, which sample each held-out chunk from its own seed (Stream.EVAL, seed, 0, chunk); the
weights, training rewards and adapter norm did not move.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from firm.train import run
from tests.conftest import tiny_config

TOL = 1e-6
PINNED = {
    "eval": {"positiveness": 0.7849250063300133, "conciseness": 0.5905576124787331},
    "kl": 0.00020480369372914234,
    "round_1_weights": {"0": [0.47383214538366825, 0.5261678546163318], "1": [0.4722427542158995, 0.5277572457841005]},
    "train_reward": {"positiveness": 0.6034250259399414, "conciseness": 0.5894378870725632},
    "adapter_norm": 3.284063742163443,
}


def test_the_tiny_firm_run_at_seed_0_gives_its_pinned_figures(tmp_path: Path) -> None:
    result = run(tiny_config(tmp_path, "output.name=pinned"))
    last = result.metrics[-1]
    norm = sum(float(t.double().pow(2).sum()) for t in result.final_adapter.values()) ** 0.5
    assert last["eval"] == pytest.approx(PINNED["eval"], abs=TOL)
    assert last["kl"] == pytest.approx(PINNED["kl"], abs=TOL)
    assert result.metrics[0]["weights"] == {c: pytest.approx(w, abs=TOL) for c, w in PINNED["round_1_weights"].items()}
    assert last["train"]["reward"] == pytest.approx(PINNED["train_reward"], abs=TOL)
    assert norm == pytest.approx(PINNED["adapter_norm"], abs=TOL)
