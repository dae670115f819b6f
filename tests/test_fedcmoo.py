"""FedCMOO: top-k probe compression, the server's warm-started projected-gradient weights, exact bytes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

import firm
from firm.algorithms import FedCmoo
from firm.codec import encode
from firm.solvers import min_norm_weights
from firm.toy import quadratic_oracle
from tests.conftest import tiny_config

F64 = torch.float64


def test_topk_round_trip_by_hand() -> None:
    from firm.compression import topk_compress, topk_decompress

    v = torch.tensor([0.1, -3.0, 0.0, 2.0, -0.5])
    c = topk_compress(v, 2)  # the two largest magnitudes: -3 (index 1) and 2 (index 3)
    assert c["indices"].tolist() == [1, 3] and c["values"].tolist() == [-3.0, 2.0]
    assert c["indices"].dtype == torch.int32 and c["values"].dtype == torch.float32
    assert topk_decompress(c["values"], c["indices"], 5).tolist() == [0.0, -3.0, 0.0, 2.0, 0.0]


def fedcmoo(compression: float = 4.0, reg: float = 0.0) -> FedCmoo:
    return FedCmoo(2, (0.5, 0.5), 1, 1, "sgd", 0.5, 1.0, compression, reg)


def test_probe_plan_and_local_steps_on_the_toy_problem() -> None:
    # theta0 = 0, c1 = (2, 0), c2 = (0, 1): g1 = (-2, 0), g2 = (0, -1), Gram diag(4, 1), normalised by
    # its mean diagonal 2.5 -> diag(1.6, 0.4); exact min-norm w1 = 0.4 / 2.0 = 0.2. With compression 4,
    # k = floor(4 * 2 / 4) = 2 = d: no loss.
    algorithm = fedcmoo()
    targets = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=F64)
    theta = torch.nn.Parameter(torch.zeros(2, dtype=F64))
    probe = algorithm.client_probe({"theta": theta}, quadratic_oracle(theta, targets), {})
    probes = algorithm.new_probe_aggregator(2)
    probes.add(probe.uploads, 1.0)
    plan, state = algorithm.server_plan(probes, {})
    exact = min_norm_weights(np.array([[4.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(plan["weights"].numpy(), exact, atol=1e-3)  # projected gradient, warm-started at p
    update = algorithm.client_update({"theta": theta}, quadratic_oracle(theta, targets), {}, plan=plan)
    # One SGD step with weights (0.2, 0.8): theta = -0.5 (0.2 (-2, 0) + 0.8 (0, -1)) = (0.2, 0.4).
    torch.testing.assert_close(update.upload["theta"], torch.tensor([0.2, 0.4], dtype=F64), atol=1e-3, rtol=0)
    # The next round's solve starts from these weights (warm start).
    torch.testing.assert_close(state["weights"], plan["weights"].to(F64))


def test_steered_variant_moves_towards_the_preference() -> None:
    targets = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=F64)
    theta = torch.nn.Parameter(torch.zeros(2, dtype=F64))
    weights = []
    for reg in (0.0, 1.0, 100.0):
        algorithm = FedCmoo(2, (0.9, 0.1), 1, 1, "sgd", 0.5, 1.0, 4.0, reg)
        probes = algorithm.new_probe_aggregator(2)
        probes.add(algorithm.client_probe({"theta": theta}, quadratic_oracle(theta, targets), {}).uploads, 1.0)
        weights.append(float(algorithm.server_plan(probes, {})[0]["weights"][0]))
    assert weights[0] < weights[1] < weights[2] and abs(weights[2] - 0.9) < 0.02


def test_bytes_on_the_tiny_model(tmp_path: Path) -> None:
    result = firm.run(tiny_config(tmp_path, "algorithm.name=fedcmoo", "fedcmoo.compression=0.5", "federation.rounds=1"))
    row = result.metrics[0]
    adapter_bytes = result.summary["adapter_bytes"]
    d = result.summary["adapter_parameters"]
    k = math.floor(0.5 * d / (2 * 2))
    probe_payload = {}
    for m in range(2):
        probe_payload[f"values_{m}"] = torch.zeros(k, dtype=torch.float32)
        probe_payload[f"indices_{m}"] = torch.zeros(k, dtype=torch.int32)
    probe_bytes = len(encode(probe_payload))
    # The data part of the probe is the budget: 2 objectives x k entries x (4 + 4) bytes <= 0.5 adapter.
    assert 2 * k * 8 <= 0.5 * d * 4
    clients = len(row["clients"])
    assert row["comm"]["upload_bytes"] == clients * (probe_bytes + adapter_bytes)  # two round trips
    plan_bytes = len(encode({"weights": torch.zeros(2, dtype=torch.float32)}))
    assert row["comm"]["download_bytes"] == clients * (adapter_bytes + plan_bytes)
    assert len(row["server"]["plan"]["weights"]) == 2
    assert all(w == row["server"]["plan"]["weights"] for w in row["weights"].values())  # every client uses the server's weights


def test_fedcmoo_reaches_the_pareto_set_of_the_two_client_toy() -> None:
    from tests.test_baselines_toy import TARGETS, pareto_gap

    algorithm = FedCmoo(2, (0.5, 0.5), 1, 1, "sgd", 0.1, 1.0, 4.0, 0.0)
    global_theta = torch.tensor([2.0, 2.0], dtype=F64)
    assert pareto_gap(global_theta) > 1.0
    state: dict[str, torch.Tensor] = {}
    for _ in range(200):
        probes = algorithm.new_probe_aggregator(2)
        for targets in TARGETS:
            theta = torch.nn.Parameter(global_theta.clone())
            probes.add(algorithm.client_probe({"theta": theta}, quadratic_oracle(theta, targets), {}).uploads, 1.0)
        plan, state = algorithm.server_plan(probes, state)  # warm-started from the last round's weights
        aggregator = algorithm.new_aggregator()
        for targets in TARGETS:
            theta = torch.nn.Parameter(global_theta.clone())
            update = algorithm.client_update({"theta": theta}, quadratic_oracle(theta, targets), {}, plan=plan)
            aggregator.add(update.uploads, 1.0)
        global_theta = algorithm.server_update({"theta": global_theta}, aggregator)["theta"]
    # The server weighs the AVERAGED gradients, so there is no client-drift bias (unlike in-client mgda/firm);
    # what is left is the projected-gradient solver's inexactness.
    assert pareto_gap(global_theta) < 1e-2, global_theta
