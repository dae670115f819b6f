"""FIRM's regulariser variants, anchor p, uniform or previous, and reg schedules, with their fixed points by hand
(docs/algorithms/firm.md, "Variants of the regulariser").

The toy is f_m(theta) = 1/2 ||theta - c_m||^2 with c_1 = (-1, 0), c_2 = (1, 0), so g_m = theta - c_m,
and with weights lambda the step direction is d = theta - sum_m lambda_m c_m = (x - 1 + 2 lambda_1, y)
at theta = (x, y). Hence, by hand:
- the Pareto set is the segment y = 0, -1 <= x <= 1; there d = 0 exactly for lambda_1 = (1 - x) / 2,
  and the min-norm weights are those (the only lambda with d = 0: every Pareto point has its own);
- whatever the weights, y_k = y_0 (1 - lr)^k under SGD: y vanishes geometrically on every path;
- the stationary point of a fixed scalarisation with weights a is sum_m a_m c_m = (a_2 - a_1, 0).
Everything is float64 on one client, one round = K local steps, so the round is the client's update.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from firm.algorithms import Firm
from firm.algorithms.firm import LAST_WEIGHTS, scheduled_reg
from firm.algorithms.protocol import ROUND_IDX
from firm.config import ConfigError
from firm.engines.flower.node_state import ClientStateStore
from firm.solvers import min_norm_weights
from firm.toy import quadratic_oracle
from firm.train import RunResult, run
from firm.validation import load_config
from tests.conftest import tiny_config
from tests.test_flower_client import LoopbackGrid, _flower_config, _flower_run, _in_a_flower_task  # noqa: F401 (a fixture)

F64 = torch.float64
TARGETS = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=F64)  # c_1, c_2: the Pareto set is [-1, 1] x {0}
P = (0.7, 0.3)  # the preference; its scalarisation's stationary point is (0.3 - 0.7, 0) = (-0.4, 0)


def firm(anchor: str = "preference", reg: float = 1.0, rounds: int = 40, **kwargs: Any) -> Firm:
    """FIRM built from the config, as a run builds it: K = 5 SGD steps of lr 0.5 per round."""
    overrides = [f"algorithm.anchor={anchor}", f"algorithm.reg={reg}", f"federation.rounds={rounds}"]
    overrides += [f"algorithm.{k}={v}" for k, v in kwargs.items()]
    sgd = ["algorithm.local_steps=5", "algorithm.optimizer=sgd", "algorithm.lr=0.5"]
    return Firm.from_config(load_config(None, [*overrides, *sgd, "objectives.preference=[0.7, 0.3]"]))


def run_rounds(
    algorithm: Firm, start: list[float], rounds: int, state: dict[str, Any] | None = None, first_round: int = 1
) -> tuple[torch.Tensor, list[list[dict[str, Any]]], dict[str, Any]]:
    """One client, every round, as an engine runs it: the round index in the state it hands over, the returned state kept."""
    theta_global = torch.tensor(start, dtype=F64)
    state = dict(state or {})
    logs = []
    for round_idx in range(first_round, first_round + rounds):
        theta = torch.nn.Parameter(theta_global.clone())
        update = algorithm.client_update({"theta": theta}, quadratic_oracle(theta, TARGETS), {**state, ROUND_IDX: round_idx})
        theta_global = theta_global + update.upload["theta"]
        state = update.client_state
        logs.append(update.steps)
    return theta_global, logs, state


def direction_norm(theta: torch.Tensor, weights: list[float] | torch.Tensor) -> float:
    """||G^T lambda|| = ||sum_m lambda_m (theta - c_m)||: 0 iff lambda certifies theta Pareto-stationary."""
    return float((torch.as_tensor(weights, dtype=F64) @ (theta[None] - TARGETS)).norm())


def pareto_gap(theta: torch.Tensor) -> float:
    """The min-norm value at theta: 0 exactly on the Pareto set."""
    grads = theta[None] - TARGETS
    return direction_norm(theta, min_norm_weights(grads @ grads.T))


START = ([0.5, 2.0], [3.0, -1.0], [-2.0, 1.0])


# --------------------------------------------------------------------------- the anchors' fixed points


def test_preference_anchor_ends_at_the_p_scalarisations_point() -> None:
    # Fixed point with a = p (full support), constant reg: lambda = p and theta* = p_1 c_1 + p_2 c_2 = (-0.4, 0).
    for start in START:
        theta, logs, state = run_rounds(firm("preference"), start, 40)
        torch.testing.assert_close(theta, torch.tensor([-0.4, 0.0], dtype=F64), atol=1e-9, rtol=0.0)
        torch.testing.assert_close(
            torch.tensor(logs[-1][-1]["weights"], dtype=F64), torch.tensor(P, dtype=F64), atol=1e-9, rtol=0.0
        )
        assert state == {} and all(step["anchor"] == pytest.approx(P) for step in logs[-1])


def test_uniform_anchor_ends_at_the_uniform_scalarisations_point_whatever_p() -> None:
    # The same derivation with a = (1/2, 1/2): lambda = a at a fixed point, theta* = (c_1 + c_2) / 2 = (0, 0), not (-0.4, 0).
    algorithm = firm("uniform")
    assert algorithm.anchor == (0.5, 0.5) and not algorithm.previous_anchor
    for start in START:
        theta, logs, _ = run_rounds(algorithm, start, 40)
        torch.testing.assert_close(theta, torch.zeros(2, dtype=F64), atol=1e-9, rtol=0.0)
        assert logs[-1][-1]["weights"] == pytest.approx([0.5, 0.5], abs=1e-9)


def test_previous_anchor_two_steps_by_hand() -> None:
    # theta0 = (0, 1): g_1 = (1, 1), g_2 = (-1, 1), Q = 2 I, Qn = I. Step 1 anchors at p = (0.7, 0.3), reg 1:
    #   w_1 = (Qn22 - Qn12 + 2 reg a_1) / (Qn11 - 2 Qn12 + Qn22 + 2 reg) = (1 + 1.4) / (2 + 2) = 0.6,
    #   d = (x - 1 + 2 w_1, y) = (0.2, 1), theta1 = theta0 - 0.5 d = (-0.1, 0.5).
    # Step 2 anchors at step 1's weights (0.6, 0.4): g_1 = (0.9, 0.5), g_2 = (-1.1, 0.5),
    #   Q11 = 1.06, Q22 = 1.46, Q12 = -0.74, mean diag 1.26, so with Qn = Q / 1.26:
    #   w_1 = (2.2 / 1.26 + 2 * 0.6) / (4 / 1.26 + 2) = (2.2 + 1.512) / (4 + 2.52) = 3.712 / 6.52,
    #   where the preference anchor would give (2.2 + 1.764) / 6.52.
    algorithm = Firm(P, 1.0, 2, 1, "sgd", 0.5, 1.0, previous_anchor=True)
    theta, (steps,), state = run_rounds(algorithm, [0.0, 1.0], 1)
    assert steps[0]["anchor"] == pytest.approx(P, abs=1e-15) and steps[0]["weights"] == pytest.approx([0.6, 0.4], abs=1e-15)
    assert steps[1]["anchor"] == steps[0]["weights"]
    assert steps[1]["weights"][0] == pytest.approx(3.712 / 6.52, abs=1e-15)
    assert state == {LAST_WEIGHTS: steps[1]["weights"]}  # the next round's first anchor
    w1 = 3.712 / 6.52  # theta2 = theta1 - 0.5 (x1 - 1 + 2 w_1, y1)
    torch.testing.assert_close(theta, torch.tensor([-0.1 - 0.5 * (-1.1 + 2 * w1), 0.25], dtype=F64), atol=1e-15, rtol=0.0)


def test_previous_anchor_ends_at_a_start_dependent_pareto_point_with_the_min_norm_weights() -> None:
    # At a fixed point lambda = its own anchor, so the pull vanishes: lambda minimises lambda^T Qn lambda
    # (min-norm) and d = 0, i.e. theta* = (x*, 0) on the Pareto segment and lambda_1 = (1 - x*) / 2;
    # which x* depends on the start, and it is not the p-point (-0.4, 0).
    ends = []
    for start in START:
        theta, logs, state = run_rounds(firm("previous"), start, 40)
        weights = logs[-1][-1]["weights"]
        assert abs(float(theta[1])) < 1e-15 and -1.0 <= float(theta[0]) <= 1.0  # on the segment
        assert direction_norm(theta, weights) < 1e-12  # ||G lambda|| = 0: lambda certifies Pareto-stationarity
        assert weights[0] == pytest.approx((1 - float(theta[0])) / 2, abs=1e-12)  # the min-norm weights there
        assert state[LAST_WEIGHTS] == weights
        ends.append(float(theta[0]))
    assert min(abs(a - b) for i, a in enumerate(ends) for b in ends[i + 1 :]) > 0.1  # three starts, three end points
    assert max(abs(x + 0.4) for x in ends) > 0.5  # not where the preference anchor ends


@pytest.mark.parametrize("x", [-1.0, -0.4, 0.5])
def test_every_pareto_point_is_a_fixed_point_of_the_previous_anchor_but_only_p_of_the_preference_anchor(x: float) -> None:
    # Start at (x, 0) with the anchor lambda* = ((1 - x) / 2, (1 + x) / 2): Qn lambda* = 0, so lambda = lambda*
    # solves the KKT conditions of the regularised problem (the pull is 0 at lambda*), d = 0 and nothing moves.
    star = [(1 - x) / 2, (1 + x) / 2]
    theta, _, state = run_rounds(firm("previous"), [x, 0.0], 3, state={LAST_WEIGHTS: star})
    torch.testing.assert_close(theta, torch.tensor([x, 0.0], dtype=F64), atol=1e-12, rtol=0.0)
    assert state[LAST_WEIGHTS] == pytest.approx(star, abs=1e-12)
    moved, _, _ = run_rounds(firm("preference"), [x, 0.0], 3)  # the preference anchor leaves it unless x = -0.4
    assert (float((moved - theta).norm()) > 1e-3) == (x != -0.4)


def test_previous_anchor_starts_each_round_from_the_clients_last_weights() -> None:
    _, logs, _ = run_rounds(firm("previous", rounds=3), [0.5, 2.0], 3)
    assert logs[0][0]["anchor"] == pytest.approx(P)  # p the very first time
    for before, after in itertools.pairwise(logs):
        assert after[0]["anchor"] == before[-1]["weights"]  # a round starts where the last one ended
    for steps in logs:
        assert all(b["anchor"] == a["weights"] for a, b in itertools.pairwise(steps))  # step k anchors at k - 1


def test_previous_anchor_chains_through_inner_epochs() -> None:
    algorithm = Firm(P, 1.0, 2, 3, "sgd", 0.5, 1.0, previous_anchor=True)
    _, (steps,), state = run_rounds(algorithm, [0.0, 1.0], 1)
    assert len(steps) == 6 and all(b["anchor"] == a["weights"] for a, b in itertools.pairwise(steps))
    assert state[LAST_WEIGHTS] == steps[-1]["weights"]


# --------------------------------------------------------------------------- reg schedules


def test_schedules_by_hand() -> None:
    # R = 5 rounds, t = (r - 1) / 4 = 0, 1/4, 1/2, 3/4, 1.
    rounds = range(1, 6)
    assert [scheduled_reg("constant", 2.0, 0.0, r, 5) for r in rounds] == [2.0] * 5
    assert [scheduled_reg("linear", 1.0, 0.0, r, 5) for r in rounds] == [1.0, 0.75, 0.5, 0.25, 0.0]
    # cosine: reg_final + (reg - reg_final) (1 + cos(pi t)) / 2 = 1, (2 + sqrt 2) / 4, 1/2, (2 - sqrt 2) / 4, 0
    cosine = [1.0, (2 + math.sqrt(2)) / 4, 0.5, (2 - math.sqrt(2)) / 4, 0.0]
    assert [scheduled_reg("cosine", 1.0, 0.0, r, 5) for r in rounds] == pytest.approx(cosine, abs=1e-15)
    # exponential: reg (reg_final / reg)^t = 16^(1 - t): 16, 8, 4, 2, 1
    assert [scheduled_reg("exponential", 16.0, 1.0, r, 5) for r in rounds] == pytest.approx([16.0, 8.0, 4.0, 2.0, 1.0], rel=1e-15)
    assert scheduled_reg("linear", 1.0, 0.0, 1, 1) == 1.0  # one round: t = 0
    assert scheduled_reg("linear", 1.0, 3.0, 3, 5) == 2.0  # reg_final > reg ramps up
    with pytest.raises(ValueError, match="unknown reg schedule"):
        scheduled_reg("step", 1.0, 0.0, 1, 5)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exponential"])
def test_each_round_solves_with_its_scheduled_reg(schedule: str) -> None:
    final = 0.01 if schedule == "exponential" else 0.0
    algorithm = firm(reg=1.0, rounds=6, reg_schedule=schedule, reg_final=final)
    _, logs, _ = run_rounds(algorithm, [0.5, 2.0], 6)
    for round_idx, steps in enumerate(logs, start=1):
        expected = scheduled_reg(schedule, 1.0, final, round_idx, 6)
        assert {step["reg"] for step in steps} == {expected}, round_idx
    assert logs[0][0]["reg"] == 1.0 and logs[-1][0]["reg"] == final  # the ends are reg and reg_final exactly


def test_the_round_comes_from_the_client_state_and_defaults_to_the_first() -> None:
    algorithm = firm(reg=1.0, rounds=5, reg_schedule="linear", reg_final=0.0)
    theta = torch.nn.Parameter(torch.tensor([0.5, 2.0], dtype=F64))
    assert algorithm.client_update({"theta": theta}, quadratic_oracle(theta, TARGETS), {}).steps[0]["reg"] == 1.0
    assert algorithm.client_update({"theta": theta}, quadratic_oracle(theta, TARGETS), {ROUND_IDX: 4}).steps[0]["reg"] == 0.25


def test_a_schedule_to_zero_ends_like_mgda_at_a_start_dependent_pareto_point() -> None:
    # For any reg > 0 the only fixed point is the p-point (-0.4, 0) (constant reg 1 gets there from
    # every start); at reg = 0 every Pareto point is one. Decaying 0.1 -> 0 over 10 rounds, the path reaches
    # the Pareto set and stops sliding towards the p-point as reg dies: the last round is MGDA exactly.
    ends = []
    for start in START[:2]:
        algorithm = firm(reg=0.1, rounds=10, reg_schedule="linear", reg_final=0.0)
        theta, logs, _ = run_rounds(algorithm, start, 10)
        for step in logs[-1]:
            assert step["reg"] == 0.0
        assert pareto_gap(theta) < 1e-12
        again, _, _ = run_rounds(algorithm, theta.tolist(), 1, first_round=10)  # another reg-0 round: a fixed point
        torch.testing.assert_close(again, theta, atol=1e-12, rtol=0.0)
        ends.append(float(theta[0]))
    assert abs(ends[0] - ends[1]) > 0.1 and min(abs(x + 0.4) for x in ends) > 0.1
    constant = [run_rounds(firm(reg=1.0, rounds=40), start, 40)[0] for start in START[:2]]
    for theta in constant:
        torch.testing.assert_close(theta, torch.tensor([-0.4, 0.0], dtype=F64), atol=1e-9, rtol=0.0)


def test_a_schedule_to_a_large_reg_is_fedavg_with_p() -> None:
    # ||lambda - p||_2 <= ||Qn||_2 / reg <= M / reg: at reg 1e8 the weights are p to 2e-8, FedAvg(p)'s.
    _, logs, _ = run_rounds(firm(reg=1.0, rounds=4, reg_schedule="exponential", reg_final=1e8), [0.5, 2.0], 4)
    for step in logs[-1]:
        assert step["reg"] == pytest.approx(1e8) and step["weights"] == pytest.approx(P, abs=2e-8)


# --------------------------------------------------------------------------- config


def test_from_config_reads_the_anchor_and_the_schedule() -> None:
    config = load_config(None, ["algorithm.anchor=previous", "algorithm.reg_schedule=cosine", "algorithm.reg_final=0.1"])
    algorithm = Firm.from_config(config)
    assert algorithm.previous_anchor and algorithm.anchor == (0.5, 0.5)  # p (uniform by default) the first time
    assert (algorithm.reg_schedule, algorithm.reg_final, algorithm.rounds) == ("cosine", 0.1, config.federation.rounds)
    default = Firm.from_config(load_config(None, []))
    assert (default.previous_anchor, default.reg_schedule, default.reg_final) == (False, "constant", None)
    assert {default.reg_at(r) for r in range(1, 7)} == {1.0}


BAD = [
    (["algorithm.anchor=median"], "algorithm.anchor: got 'median', allowed: one of 'preference', 'uniform', 'previous'"),
    (["algorithm.reg_schedule=step"], "algorithm.reg_schedule: got 'step', allowed"),
    (["algorithm.reg_schedule=linear"], "algorithm.reg_final: the 'linear' reg schedule needs the reg of the last round, >= 0"),
    (["algorithm.reg_schedule=cosine", "algorithm.reg_final=-0.5"], "needs the reg of the last round, >= 0; got -0.5"),
    (["algorithm.reg_schedule=exponential", "algorithm.reg_final=0"], "the 'exponential' reg schedule needs algorithm.reg > 0"),
    (
        ["algorithm.reg_schedule=exponential", "algorithm.reg=0", "algorithm.reg_final=1"],
        "the 'exponential' reg schedule needs algorithm.reg > 0 and algorithm.reg_final > 0",
    ),
    (["algorithm.reg_final=0.1"], "algorithm.reg_final: 0.1 does nothing with algorithm.reg_schedule = 'constant'"),
    (["algorithm.reg_final=inf"], "algorithm.reg_final: expected a finite number"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD)
def test_bad_anchor_and_schedule_values_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_good_schedules_are_accepted() -> None:
    assert load_config(None, ["algorithm.reg_final=1.0"]).algorithm.reg_final == 1.0  # = reg: constant all the same
    assert load_config(None, ["algorithm.reg_schedule=linear", "algorithm.reg_final=0"]).algorithm.reg_final == 0.0
    assert load_config(None, ["algorithm.reg_schedule=cosine", "algorithm.reg=0", "algorithm.reg_final=2"]).algorithm.reg == 0.0


# --------------------------------------------------------------------------- engines: the round index and the kept lambda


def test_the_last_weights_survive_a_flower_nodes_state_store(tmp_path: Path) -> None:
    """The Flower client saves `update.client_state` on its node's disk each round and loads the version the server names."""
    _, _, state = run_rounds(firm("previous"), [0.5, 2.0], 2)
    store = ClientStateStore(tmp_path, "run-key", 3)
    store.save(2, state)
    assert store.load(2) == state and isinstance(state[LAST_WEIGHTS], list)


def _check_chain(result: RunResult, p: tuple[float, ...], rounds: int) -> dict[int, list[list[float]]]:
    """Every client's first anchor of a round is its last lambda of its previous round (p the first time), and each
    round's steps use the schedule's reg; returns each client's per-round anchors."""
    last: dict[str, list[float]] = {}
    anchors: dict[int, list[list[float]]] = {}
    for row in result.metrics:
        for client, steps in row["local"].items():
            assert steps[0]["anchor"] == pytest.approx(last.get(client, p), abs=1e-12), (row["round"], client)
            for a, b in itertools.pairwise(steps):
                assert b["anchor"] == pytest.approx(a["weights"], abs=1e-12)
            assert [s["reg"] for s in steps] == pytest.approx(
                [scheduled_reg("linear", 1.0, 0.2, row["round"], rounds)] * len(steps)
            )
            last[client] = steps[-1]["weights"]
            anchors.setdefault(int(client), []).append(steps[0]["anchor"])
    return anchors


@pytest.mark.usefixtures("_in_a_flower_task")
def test_both_engines_pass_the_round_and_keep_the_clients_last_weights(tmp_path: Path) -> None:
    overrides = [
        "algorithm.anchor=previous",
        "algorithm.reg_schedule=linear",
        "algorithm.reg_final=0.2",
        "objectives.preference=[0.7, 0.3]",
        "federation.rounds=4",
        "federation.clients_per_round=1",
        "federation.seed=2",  # clients 1, 0, 1, 0: each sits a round out between its two rounds
        "eval.every=4",
        "output.name=run",
    ]
    ours = run(tiny_config(tmp_path / "inprocess", *overrides))
    config = _flower_config(tmp_path / "flower", *overrides)
    flower = _flower_run(config, LoopbackGrid(config))
    assert [r["clients"] for r in ours.metrics] == [r["clients"] for r in flower.metrics]
    assert [r["clients"] for r in ours.metrics] == [[1], [0], [1], [0]]  # the chain spans a round each sat out
    mine, theirs = _check_chain(ours, P, 4), _check_chain(flower, P, 4)
    assert mine[0][0] != mine[0][1] and mine.keys() == theirs.keys()  # the second round did not restart from p
    for client, anchors in mine.items():
        torch.testing.assert_close(torch.tensor(theirs[client]), torch.tensor(anchors), atol=1e-6, rtol=0.0)
    # In process the run's checkpoint keeps each client's state, so a resumed run continues the chain.
    state = json.loads((ours.run_dir / "checkpoints" / "round_0004" / "state.json").read_text())
    last = {c: row["local"][str(c)][-1]["weights"] for row in ours.metrics for c in row["clients"]}
    assert {int(c): s[LAST_WEIGHTS] for c, s in state["client_states"].items()} == last


def test_only_the_uniform_anchor_ignores_the_preference() -> None:
    from firm.algorithms import uses_preference
    from firm.config import Config, config_from_dict, config_to_dict

    def with_anchor(anchor: str) -> Config:
        data = config_to_dict(Config())
        data["algorithm"]["anchor"] = anchor
        return config_from_dict(data)

    assert uses_preference(with_anchor("preference"))
    assert uses_preference(with_anchor("previous"))  # p is the very first anchor
    assert not uses_preference(with_anchor("uniform"))
