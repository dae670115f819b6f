"""Server memory: the norm screen holds a round's updates encoded in a spill, not decoded in memory.

`firm.robust.SpilledUpdates` must decide exactly as `firm.robust.screen` over the decoded
updates (same rejections, same reasons, same order) and give the same aggregate bit for bit,
whether its spill stays in memory or moves to disk; its file must be gone when the round ends,
also when the round is interrupted. The memory figures are in benchmarks/aggregation.py.
"""

from __future__ import annotations

import gc
import math
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

import firm.robust
from firm.aggregation import RunningMean, apply_mean_delta
from firm.algorithms.protocol import ClientUpdate
from firm.robust import Candidate, RobustMean, SpilledUpdates, screen
from firm.train import run
from tests.conftest import tiny_config
from tests.test_reliability import engine_with

# The tiny model's LoRA shapes for one layer's q_proj (r = 8, width 128).
REFERENCE = {"q.lora_A": torch.zeros(8, 128), "q.lora_B": torch.zeros(128, 8)}


def delta(seed: int, scale: float = 1e-3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(t.shape, generator=gen) for n, t in REFERENCE.items()}


def round_of_updates() -> list[Candidate]:
    """Nine clients: six honest (different scales and sample counts) and one of each failure."""
    cands = [Candidate(i, [delta(i, scale=1e-3 * (1 + i / 3))], float(4 + i)) for i in range(6)]
    nan = delta(6)
    nan["q.lora_A"][0, 0] = math.nan
    wrong_shape = {"q.lora_A": torch.ones(128, 8), "q.lora_B": torch.ones(128, 8)}
    cands += [
        Candidate(6, [nan], 4.0),
        Candidate(7, [delta(7, scale=0.5)], 4.0),  # about 300x the median norm: the norm screen's outlier
        Candidate(8, [wrong_shape], 4.0),
        Candidate(9, [delta(9)], 0.0),  # no samples
    ]
    return cands[:3] + cands[6:8] + cands[3:6] + cands[8:]  # rejects interleaved with honest updates


def aggregate(passed: Any, aggregator: RunningMean) -> RunningMean:
    for c in passed:
        aggregator.add(c.uploads, c.weight)
    return aggregator


@pytest.mark.parametrize("spill_after", [1, 2**20], ids=["on-disk", "in-memory"])
@pytest.mark.parametrize("rule", ["mean", "median", "trimmed_mean"])
def test_spilled_screen_gives_the_in_memory_screens_rejections_and_aggregate_bit_for_bit(
    tmp_path: Path, spill_after: int, rule: str
) -> None:
    cands = round_of_updates()
    passed, rejected = screen(cands, REFERENCE, 1, max_norm_ratio=10.0)
    with SpilledUpdates(REFERENCE, 1, 10.0, spill_after=spill_after, directory=str(tmp_path)) as spilled:
        for c in cands:
            spilled.add(c)
        assert spilled.on_disk == (spill_after == 1)
        assert list(spilled.screen().items()) == list(rejected.items())  # same clients, reasons and order
        streamed = list(spilled.passed())
    assert sorted(rejected) == [6, 7, 8, 9]
    assert "NaN or Inf" in rejected[6] and "x the round's median" in rejected[7]
    assert "shape (128, 8)" in rejected[8] and "sample count 0.0" in rejected[9]
    assert [c.client_id for c in streamed] == [c.client_id for c in passed] == [0, 1, 2, 3, 4, 5]
    for a, b in zip(streamed, passed, strict=True):
        assert a.weight == b.weight and list(a.uploads[0]) == list(b.uploads[0])  # same names, same order
        assert all(torch.equal(a.uploads[0][n], b.uploads[0][n]) for n in REFERENCE)
    expected = aggregate(passed, RunningMean() if rule == "mean" else RobustMean(rule))
    got = aggregate(streamed, RunningMean() if rule == "mean" else RobustMean(rule))
    assert all(torch.equal(got.mean()[n], expected.mean()[n]) for n in REFERENCE)
    assert got.update_drift() == expected.update_drift() and got.sq_norm_sum == expected.sq_norm_sum
    new, old = apply_mean_delta(REFERENCE, got, 1.0), apply_mean_delta(REFERENCE, expected, 1.0)
    assert all(torch.equal(new[n], old[n]) for n in REFERENCE)


@pytest.mark.parametrize(
    ("clients", "ratio", "accepted"),
    [([0, 1, 5, 6], 10.0, [0, 1]), ([0, 1, 5, 6], 0.0, [0, 1, 5]), ([0, 5, 6], 10.0, [0, 5])],
    ids=["screened", "screen-off", "fewer-than-3"],
)
def test_several_payloads_per_update_screen_off_and_fewer_than_three_updates(
    tmp_path: Path, clients: list[int], ratio: float, accepted: list[int]
) -> None:
    pool = {i: Candidate(i, [delta(2 * i), delta(2 * i + 1, scale=1e-2)], 1.0) for i in (0, 1)}
    pool[5] = Candidate(5, [delta(10, scale=10.0), delta(11)], 1.0)  # ~1000x the others' norm
    pool[6] = Candidate(6, [delta(12)], 1.0)  # one payload where two are expected
    cands = [pool[i] for i in clients]
    passed, rejected = screen(cands, REFERENCE, 2, max_norm_ratio=ratio)
    with SpilledUpdates(REFERENCE, 2, ratio, spill_after=1, directory=str(tmp_path)) as spilled:
        for c in cands:
            spilled.add(c)
        assert list(spilled.screen().items()) == list(rejected.items())
        streamed = list(spilled.passed())
    assert "1 payloads, expected 2" in rejected[6]
    assert [c.client_id for c in streamed] == [c.client_id for c in passed] == accepted
    for a, b in zip(streamed, passed, strict=True):
        assert all(torch.equal(u[n], v[n]) for u, v in zip(a.uploads, b.uploads, strict=True) for n in REFERENCE)


def test_any_dtype_shape_and_name_order_reads_back_bit_for_bit(tmp_path: Path) -> None:
    reference = {
        "z": torch.zeros(3, dtype=torch.bfloat16),  # odd byte counts: the next tensor starts unaligned
        "b": torch.zeros(2, 5),
        "empty": torch.zeros(0, 4, dtype=torch.float64),
        "a": torch.zeros(7, dtype=torch.float16),
        "c": torch.zeros(2, 3, dtype=torch.float64),
    }
    gen = torch.Generator().manual_seed(0)
    updates = []
    for i in range(4):
        names = list(reference)[i:] + list(reference)[:i]  # every client sends its names in another order
        updates.append({n: torch.randn(reference[n].shape, generator=gen).to(reference[n].dtype) for n in names})
    updates[1]["c"] = updates[1]["c"].t().contiguous().t()  # a non-contiguous tensor of the right shape
    with SpilledUpdates(reference, 1, 0.0, spill_after=1, directory=str(tmp_path)) as spilled:
        for i, u in enumerate(updates):
            spilled.add(Candidate(i, [u], 1.0))
        assert spilled.screen() == {} and spilled.on_disk
        back = [c.uploads[0] for c in spilled.passed()]
    for got, sent in zip(back, updates, strict=True):
        assert list(got) == list(sent)
        for n, t in sent.items():
            assert got[n].dtype == t.dtype and got[n].shape == t.shape and torch.equal(got[n], t)


def spill_files(directory: Path) -> list[str]:
    """Files of `directory` this process holds open (an unnamed spill shows as '<directory>/... (deleted)')."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the fd of the listing itself, closed by now
            continue
        if target.startswith(f"{directory}/"):
            found.append(target)
    return found


def test_the_spill_holds_no_decoded_delta_and_goes_to_disk_beyond_the_threshold(tmp_path: Path) -> None:
    one = 2 * 8 * 128 * 4  # bytes of one update: its float32 values, nothing else
    with SpilledUpdates(REFERENCE, 1, 10.0, spill_after=3 * one, directory=str(tmp_path)) as spilled:
        refs = []
        for i in range(5):
            c = Candidate(i, [delta(i)], 1.0)
            refs += [weakref.ref(t) for t in c.uploads[0].values()]
            spilled.add(c)
            del c
            assert spilled.on_disk == (i >= 3)  # rolls over once more than 3 updates' bytes are written
        gc.collect()
        assert all(ref() is None for ref in refs)  # no decoded tensor is kept alive by the buffer
        spilled.spill.flush()  # the file's last bytes may still sit in its 8 KiB write buffer
        stat = os.fstat(spilled.spill.fileno())
        assert stat.st_size == spilled.size == 5 * one and stat.st_nlink == 0  # on disk, and unnamed
        assert os.listdir(tmp_path) == [] and len(spill_files(tmp_path)) == 1
        assert len(list(spilled.passed())) == 5
    assert spilled.spill.closed and spill_files(tmp_path) == []


def test_the_spill_is_removed_when_the_round_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="mid-round"), SpilledUpdates(REFERENCE, 1, 10.0, 1, str(tmp_path)) as spilled:
        spilled.add(Candidate(0, [delta(0)], 1.0))
        assert spilled.on_disk and len(spill_files(tmp_path)) == 1
        raise RuntimeError("mid-round")
    assert spilled.spill.closed and spill_files(tmp_path) == []


def test_engine_spills_to_disk_matches_streaming_bit_for_bit_and_cleans_up_even_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_dir))
    monkeypatch.setattr(firm.robust, "SPILL_AFTER_BYTES", 1)  # every held update goes to disk
    seen: list[tuple[int, int, int]] = []  # (round, client, spill files open when the client starts)

    def watch(round_idx: int, client_id: int, call: Any) -> ClientUpdate:
        seen.append((round_idx, client_id, len(spill_files(spill_dir))))
        update: ClientUpdate = call()
        return update

    clients = ["federation.num_clients=3", "federation.clients_per_round=3"]
    screened = run(tiny_config(tmp_path, *clients, "output.name=screened"), engine=engine_with(watch))
    streamed = run(tiny_config(tmp_path, *clients, "aggregation.max_norm_ratio=0", "output.name=streamed"))
    assert all(torch.equal(screened.final_adapter[n], t) for n, t in streamed.final_adapter.items())
    # the round's first update moves its spill to disk; it is closed at round end, before the next round
    assert [(r, open_) for r, _, open_ in seen] == [(1, 0), (1, 1), (1, 1), (2, 0), (2, 1), (2, 1)]
    assert spill_files(spill_dir) == [] and os.listdir(spill_dir) == []

    def interrupt(round_idx: int, client_id: int, call: Any) -> ClientUpdate:
        if len(seen) == 8:  # the third client of round 1, after two updates were spilled
            assert len(spill_files(spill_dir)) == 1
            raise KeyboardInterrupt
        return watch(round_idx, client_id, call)

    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tmp_path, *clients, "output.name=interrupted"), engine=engine_with(interrupt))
    assert spill_files(spill_dir) == [] and os.listdir(spill_dir) == []
