"""The fixed-reference hypervolume (firm.pareto.improvement_hypervolume): the volume of improvement over
the base model, the same for an algorithm alone and beside others, with hand-computed values."""

from __future__ import annotations

import pytest

from firm.pareto import common_base, hypervolume_report, improvement_hypervolume, pareto_summary, seeded_pareto

BASE = [0.60, 0.90]


def test_improvement_hypervolume_by_hand() -> None:
    # gains over (0.6, 0.9): (0.1, 0.05) and (0.02, 0.08); union of [0,0.1]x[0,0.05] and [0,0.02]x[0,0.08]
    # = 0.1 * 0.05 + 0.02 * (0.08 - 0.05) = 0.005 + 0.0006
    points = [[0.70, 0.95], [0.62, 0.98]]
    assert improvement_hypervolume(points, BASE) == pytest.approx(0.0056)
    assert improvement_hypervolume(points, BASE, scales=[0.1, 0.1]) == pytest.approx(0.56)
    assert improvement_hypervolume([[0.7, 0.85]], BASE) == 0.0  # worse than the base on one objective: nothing
    assert improvement_hypervolume([], BASE) == 0.0
    with pytest.raises(ValueError, match="scales"):
        improvement_hypervolume(points, BASE, scales=0.0)


def test_an_algorithms_hypervolume_is_the_same_alone_and_beside_others() -> None:
    firm = [[0.70, 0.95], [0.62, 0.98]]
    others = {"fedavg": [[0.75, 0.91], [0.55, 0.99]], "mgda": [[0.40, 0.70]]}
    alone = pareto_summary({"firm": firm}, BASE)
    together = pareto_summary({"firm": firm, **others}, BASE)
    assert alone is not None and together is not None
    assert alone["hypervolume"]["firm"] == together["hypervolume"]["firm"] == pytest.approx(0.0056)
    assert together["reference"] == BASE and together["scales"] == [1.0, 1.0]
    # the pooled min-max normalisation this replaces did depend on the company (the finding)
    pooled_alone = hypervolume_report({"firm": firm})["hypervolume"]["firm"]
    pooled_together = hypervolume_report({"firm": firm, **others})["hypervolume"]["firm"]
    assert pooled_alone != pytest.approx(pooled_together)


def test_the_sweeps_base_is_used_only_when_every_point_shares_it() -> None:
    names = ["a", "b"]
    same = [{"a": 0.6, "b": 0.9}, {"a": 0.6, "b": 0.9}]
    assert common_base(same, names) == [0.6, 0.9]
    assert common_base([*same, None], names) is None  # a point of an older firm without initial_eval
    assert common_base([{"a": 0.6, "b": 0.9}, {"a": 0.61, "b": 0.9}], names) is None  # another held-out set or seed


def test_a_base_evaluated_on_another_cpu_is_still_the_same_reference() -> None:
    """A sweep resumed on another machine: the same base model, prompts and seeds evaluated in float32 gave
    helpfulness 0.6661256877705455 in some runs and 0.6661256952211261 in others (issue 17's evidence run).
    That is one reference (their mean), not a reason to drop the fixed reference."""
    names = ["a", "b"]
    here, there = {"a": 0.6661256877705455, "b": 0.36}, {"a": 0.6661256952211261, "b": 0.36}
    base = common_base([here, there, here], names)
    assert base is not None
    assert base[0] == pytest.approx((2 * 0.6661256877705455 + 0.6661256952211261) / 3, abs=1e-15) and base[1] == 0.36
    assert common_base([here, {"a": 0.6661256877705455 + 2e-6, "b": 0.36}], names) is None  # beyond BASE_TOLERANCE


def test_seeds_never_mix_the_fixed_and_the_normalised_units() -> None:
    """Seed 1 has no common base: it is left out and named, not normalised min-max beside seed 0's improvement HV."""
    finals = {"firm": {0: [[0.70, 0.95]], 1: [[0.70, 0.95]]}, "mgda": {0: [[0.65, 0.92]], 1: [[0.40, 0.70]]}}
    out = seeded_pareto(finals, {0: BASE, 1: None})
    assert out is not None and list(out["by_seed"]) == ["0"] and out["unreferenced_seeds"] == ["1"]
    assert out["hypervolume"]["firm"] == pytest.approx(0.1 * 0.05) and out["interval"]["firm"]["n"] == 1
    assert out["reference"] == BASE
    older = seeded_pareto(finals, {0: None, 1: None})  # no seed has a base (an older sweep): each normalised
    assert older is not None and "unreferenced_seeds" not in older and set(older["by_seed"]) == {"0", "1"}
