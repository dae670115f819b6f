"""FedAvg, MGDA and FIRM on the toy quadratic problem, with every number derived by hand.

Objective m is f_m(theta) = 1/2 ||theta - c_m||^2, so g_m = theta - c_m, and with weights w the
combined direction is d = sum_m w_m (theta - c_m) = theta - sum_m w_m c_m. One SGD step with
learning rate 0.5 is therefore theta' = theta - 0.5 d = 0.5 theta + 0.5 sum_m w_m c_m: halfway
towards the weighted target. With c1 = e1, c2 = e2 the weighted target is w itself.

Everything is float64, so hand-derived values match to 1e-12.
"""

from __future__ import annotations

import pytest
import torch

from firm.aggregation import weights_drift
from firm.algorithms import FedAvg, Firm, Mgda
from firm.toy import quadratic_oracle

F64 = torch.float64
E1_E2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)  # c1 = (1, 0), c2 = (0, 1)


def build(
    name: str, local_steps: int = 1, inner_epochs: int = 1, optimizer: str = "sgd", lr: float = 0.5, server_lr: float = 1.0
) -> FedAvg | Mgda | Firm:
    """One of the three one-adapter algorithms, with preference / anchor p = (0.8, 0.2) and FIRM reg = 1."""
    if name == "fedavg":
        return FedAvg((0.8, 0.2), local_steps, inner_epochs, optimizer, lr, server_lr)
    if name == "mgda":
        return Mgda(local_steps, inner_epochs, optimizer, lr, server_lr)
    return Firm(
        anchor=(0.8, 0.2),
        reg=1.0,
        local_steps=local_steps,
        inner_epochs=inner_epochs,
        optimizer=optimizer,
        lr=lr,
        server_lr=server_lr,
    )


def parameter(*values: float) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=F64))


def close(actual: torch.Tensor | list[float], expected: list[float] | tuple[float, ...]) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=F64), torch.tensor(expected, dtype=F64), rtol=0.0, atol=1e-12)


# ---------------------------------------------------------------- one client


@pytest.mark.parametrize(
    ("name", "weights"),
    [
        # FedAvg: lambda = p = (0.8, 0.2), never solved for.
        ("fedavg", (0.8, 0.2)),
        # MGDA: at theta = 0, g1 = -e1, g2 = -e2, Q = I; min-norm w1 = (1 - 0) / (1 + 1) = 0.5.
        ("mgda", (0.5, 0.5)),
        # FIRM: Qn = Q = I (mean diag 1); w1 = (Qn22 - Qn12 + 2 reg a1) / (||g1 - g2||^2_n + 2 reg)
        # = (1 - 0 + 2 * 0.8) / (2 + 2) = 2.6 / 4 = 0.65.
        ("firm", (0.65, 0.35)),
    ],
)
def test_one_local_step_by_hand(name: str, weights: tuple[float, float]) -> None:
    """K = 1 SGD step (lr 0.5) from theta = 0: theta' = 0.5 w, so the delta is 0.5 w."""
    # fedavg (0.4, 0.1); mgda (0.25, 0.25); firm (0.325, 0.175).
    theta = parameter(0.0, 0.0)
    update = build(name).client_update({"theta": theta}, quadratic_oracle(theta, E1_E2, num_samples=3), {})
    expected = [0.5 * weights[0], 0.5 * weights[1]]
    assert list(update.upload) == ["theta"]
    assert update.upload["theta"].device.type == "cpu" and update.upload["theta"].dtype == F64
    close(update.upload["theta"], expected)
    close(theta.detach(), expected)  # the live parameter moved by the same amount
    close(update.mean_weights, weights)
    assert update.num_samples == 3  # one step of the oracle's 3 samples
    assert len(update.steps) == 1
    close(update.steps[0]["weights"], weights)


@pytest.mark.parametrize(
    ("name", "theta2", "mean_weights"),
    [
        # FedAvg: theta1 = (0.4, 0.1); theta2 = 0.5 theta1 + 0.5 p = (0.2 + 0.4, 0.05 + 0.1) = (0.6, 0.15)
        # (in general theta_k = (1 - 0.5^k) p).
        ("fedavg", (0.6, 0.15), (0.8, 0.2)),
        # MGDA: theta1 = (0.25, 0.25); g1 = (-0.75, 0.25), g2 = (0.25, -0.75): Q11 = Q22 = 0.625,
        # Q12 = -0.375, so w1 = (0.625 + 0.375) / (0.625 + 0.75 + 0.625) = 1 / 2 = 0.5 again;
        # theta2 = 0.5 (0.25, 0.25) + 0.5 (0.5, 0.5) = (0.375, 0.375).
        ("mgda", (0.375, 0.375), (0.5, 0.5)),
        # FIRM: theta1 = (0.325, 0.175); g1 = theta1 - e1 = (-0.675, 0.175), g2 = theta1 - e2 = (0.325, -0.825).
        #   Q11 = 0.455625 + 0.030625 = 0.48625
        #   Q22 = 0.105625 + 0.680625 = 0.78625
        #   Q12 = -0.219375 - 0.144375 = -0.36375
        #   mean diag s = (0.48625 + 0.78625) / 2 = 0.63625;   ||g1 - g2||^2 = ||e2 - e1||^2 = 2
        # Multiply numerator and denominator of the closed form by s:
        #   w1 = (Q22 - Q12 + 2 reg a1 s) / (||g1 - g2||^2 + 2 reg s)
        #      = (0.78625 + 0.36375 + 1.6 * 0.63625) / (2 + 2 * 0.63625) = 2.168 / 3.2725 = 4336 / 6545
        # theta2 = 0.5 theta1 + 0.5 (w1, 1 - w1) = (0.1625 + w1 / 2, 0.0875 + (1 - w1) / 2)
        # mean weights = ((0.65 + w1) / 2, (0.35 + 1 - w1) / 2).
        (
            "firm",
            (0.1625 + 4336 / 6545 / 2, 0.0875 + (1 - 4336 / 6545) / 2),
            ((0.65 + 4336 / 6545) / 2, (0.35 + 1 - 4336 / 6545) / 2),
        ),
    ],
)
def test_two_local_steps_by_hand(name: str, theta2: tuple[float, float], mean_weights: tuple[float, float]) -> None:
    """K = 2 SGD steps: the second step's weights are re-solved at theta1 (MGDA, FIRM)."""
    theta = parameter(0.0, 0.0)
    update = build(name, local_steps=2).client_update({"theta": theta}, quadratic_oracle(theta, E1_E2, num_samples=3), {})
    close(update.upload["theta"], theta2)
    close(update.mean_weights, mean_weights)
    assert update.num_samples == 6  # 2 steps x 3 samples
    assert len(update.steps) == 2


@pytest.mark.parametrize("name", ["fedavg", "mgda", "firm"])
def test_inner_epochs_reuse_one_problem(name: str) -> None:
    """K = 1 with 2 inner epochs takes the same two optimizer steps as K = 2 on the deterministic toy
    problem (it re-evaluates the gradient at the current theta), but counts the samples once."""
    theta_a, theta_b = parameter(0.0, 0.0), parameter(0.0, 0.0)
    inner = build(name, inner_epochs=2).client_update({"theta": theta_a}, quadratic_oracle(theta_a, E1_E2, 3), {})
    outer = build(name, local_steps=2).client_update({"theta": theta_b}, quadratic_oracle(theta_b, E1_E2, 3), {})
    close(inner.upload["theta"], outer.upload["theta"].tolist())
    close(inner.mean_weights, outer.mean_weights)
    assert (inner.num_samples, outer.num_samples) == (3, 6)
    assert len(inner.steps) == 2


def test_adam_first_step_is_lr_times_sign() -> None:
    """Adam's first step: m_hat = d, v_hat = d^2, so theta' = theta - lr d / (|d| + eps) ~ -lr sign(d)."""
    # FedAvg at theta = 0: d = theta - p = (-0.8, -0.2), so theta' = 0.1 (1, 1) up to eps / |d| = 5e-8.
    theta = parameter(0.0, 0.0)
    update = build("fedavg", optimizer="adam", lr=0.1).client_update({"theta": theta}, quadratic_oracle(theta, E1_E2), {})
    torch.testing.assert_close(update.upload["theta"], torch.tensor([0.1, 0.1], dtype=F64), rtol=0.0, atol=1e-7)


# ---------------------------------------------------------------- one federated round


@pytest.mark.parametrize(
    ("name", "delta_a", "delta_b", "weights_a", "weights_b"),
    [
        # Client A: targets e1, e2 (as above). Client B: targets (2, 0), (0, 1), so at the start
        # g1 = (-2, 0), g2 = (0, -1), Q = diag(4, 1).
        # FedAvg: B moves to 0.5 (0.8 (2, 0) + 0.2 (0, 1)) = (0.8, 0.1).
        ("fedavg", (0.4, 0.1), (0.8, 0.1), (0.8, 0.2), (0.8, 0.2)),
        # MGDA on B: w1 = (1 - 0) / (4 + 1) = 0.2; B moves to 0.5 (0.2 (2, 0) + 0.8 (0, 1)) = (0.2, 0.4).
        ("mgda", (0.25, 0.25), (0.2, 0.4), (0.5, 0.5), (0.2, 0.8)),
        # FIRM on B: Qn = diag(4, 1) / 2.5 = diag(1.6, 0.4); w1 = (0.4 - 0 + 1.6) / (1.6 + 0.4 + 2) = 0.5;
        # B moves to 0.5 (0.5 (2, 0) + 0.5 (0, 1)) = (0.5, 0.25).
        ("firm", (0.325, 0.175), (0.5, 0.25), (0.65, 0.35), (0.5, 0.5)),
    ],
)
def test_full_round_by_hand(
    name: str,
    delta_a: tuple[float, float],
    delta_b: tuple[float, float],
    weights_a: tuple[float, float],
    weights_b: tuple[float, float],
) -> None:
    """Two clients, 3 and 1 samples, server_lr 0.5: the engine's round written out, checked by hand."""
    algorithm = build(name, server_lr=0.5)
    # Start away from the origin so the server's theta^t + eta_g Deltabar is visible. Gradients only
    # depend on theta - c, so targets shifted by theta0 give the same deltas as from 0 above.
    theta0 = torch.tensor([1.0, -1.0], dtype=F64)
    global_adapter = {"theta": theta0.clone()}
    clients = [
        (theta0 + torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64), 3),  # A
        (theta0 + torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=F64), 1),  # B
    ]
    aggregator = algorithm.new_aggregator()
    deltas, client_weights = [], []
    for targets, num_samples in clients:
        theta = torch.nn.Parameter(global_adapter["theta"].clone())  # the engine sets the live adapter to the global one
        update = algorithm.client_update({"theta": theta}, quadratic_oracle(theta, targets, num_samples), {})
        assert update.num_samples == num_samples
        aggregator.add(update.upload, update.num_samples)
        deltas.append(update.upload["theta"])
        client_weights.append(update.mean_weights)
    close(deltas[0], delta_a)
    close(deltas[1], delta_b)
    close(client_weights[0], weights_a)
    close(client_weights[1], weights_b)

    # Server: Deltabar = (3 Delta_A + 1 Delta_B) / 4, theta1 = theta0 + 0.5 Deltabar.
    # fedavg: Deltabar = (1.2 + 0.8, 0.3 + 0.1) / 4 = (0.5, 0.1),             theta1 = (1.25, -0.95)
    # mgda:   Deltabar = (0.75 + 0.2, 0.75 + 0.4) / 4 = (0.2375, 0.2875),     theta1 = (1.11875, -0.85625)
    # firm:   Deltabar = (0.975 + 0.5, 0.525 + 0.25) / 4 = (0.36875, 0.19375), theta1 = (1.184375, -0.903125)
    mean_delta = [(3 * a + b) / 4 for a, b in zip(delta_a, delta_b, strict=True)]
    theta1 = algorithm.server_update(global_adapter, aggregator)
    close(theta1["theta"], [1.0 + 0.5 * mean_delta[0], -1.0 + 0.5 * mean_delta[1]])
    assert theta1["theta"].dtype == F64
    close(global_adapter["theta"], [1.0, -1.0])  # the old global adapter is not modified

    # Update drift, mean_i ||Delta_i - Deltabar||^2 / ||Deltabar||^2 (Deltabar sample-weighted, mean_i
    # plain). With weights 3/4, 1/4: Delta_A - Deltabar = 1/4 (Delta_A - Delta_B) and
    # Delta_B - Deltabar = 3/4 (Delta_B - Delta_A), so the numerator is (1/16 + 9/16) / 2 ||Delta_B - Delta_A||^2
    # = 0.3125 ||Delta_B - Delta_A||^2:
    # fedavg: 0.3125 * (0.16 + 0)            / (0.25 + 0.01)             = 0.05 / 0.26               = 5/26
    # mgda:   0.3125 * (0.0025 + 0.0225)     / (0.05640625 + 0.08265625) = 0.0078125 / 0.1390625     = 5/89
    # firm:   0.3125 * (0.030625 + 0.005625) / (0.1359765625 + 0.0375390625) = 0.011328125 / 0.173515625 = 145/2221
    expected_drift = {"fedavg": 5 / 26, "mgda": 5 / 89, "firm": 145 / 2221}[name]
    assert aggregator.update_drift() == pytest.approx(expected_drift, rel=1e-12)
    # ... and the definition computed directly from the two deltas.
    d = torch.stack(deltas)  # [clients, d]
    n = torch.tensor([3.0, 1.0], dtype=F64)
    deltabar = (n[:, None] * d).sum(0) / n.sum()
    direct = float(((d - deltabar) ** 2).sum(1).mean() / (deltabar**2).sum())
    assert aggregator.update_drift() == pytest.approx(direct, rel=1e-12)

    # Weights drift, mean_i ||lambdabar_i - mean_j lambdabar_j||_1 (unweighted):
    # fedavg: both (0.8, 0.2) -> 0.
    # mgda:   mean (0.35, 0.65); |0.5 - 0.35| + |0.5 - 0.65| = 0.3 for A, the same for B -> 0.3.
    # firm:   mean (0.575, 0.425); 0.075 + 0.075 = 0.15 for each -> 0.15 (half of MGDA's: the anchor pulls).
    expected_weights_drift = {"fedavg": 0.0, "mgda": 0.3, "firm": 0.15}[name]
    assert weights_drift(client_weights) == pytest.approx(expected_weights_drift, abs=1e-12)


# ---------------------------------------------------------------- drift definitions


def test_update_drift_matches_definition_on_a_multi_tensor_adapter() -> None:
    """Running sums give mean_i ||Delta_i - Deltabar||^2 / ||Deltabar||^2 over ALL tensors of the adapter."""
    gen = torch.Generator().manual_seed(0)
    deltas = [{"a": torch.randn(2, 3, generator=gen), "b": torch.randn(4, generator=gen)} for _ in range(3)]
    sample_weights = [1.0, 2.0, 5.0]
    aggregator = build("firm").new_aggregator()
    for delta, weight in zip(deltas, sample_weights, strict=True):
        aggregator.add(delta, weight)
    flat = torch.stack([torch.cat([d["a"].reshape(-1), d["b"]]).double() for d in deltas])  # [clients, 10]
    w = torch.tensor(sample_weights, dtype=F64)
    deltabar = (w[:, None] * flat).sum(0) / w.sum()  # sample-weighted
    direct = float(((flat - deltabar) ** 2).sum(1).mean() / (deltabar**2).sum())  # plain mean over clients
    assert aggregator.update_drift() == pytest.approx(direct, rel=1e-10)


def test_update_drift_is_zero_for_equal_deltas_and_for_a_zero_mean() -> None:
    """Identical deltas do not drift; a zero mean delta is defined to have drift 0, not NaN."""
    same = build("mgda").new_aggregator()
    for weight in (1.0, 4.0):
        same.add({"theta": torch.tensor([0.5, -1.0])}, weight)
    assert same.update_drift() == pytest.approx(0.0, abs=1e-12)
    # (+1) * 1 + (-1) * 1 = 0: the sample-weighted mean vanishes.
    cancel = build("mgda").new_aggregator()
    cancel.add({"theta": torch.tensor([1.0, 1.0])}, 1.0)
    cancel.add({"theta": torch.tensor([-1.0, -1.0])}, 1.0)
    assert cancel.update_drift() == 0.0


def test_weights_drift_by_hand() -> None:
    """mean_i ||lambdabar_i - mean_j lambdabar_j||_1."""
    # (1, 0), (0, 1), (0.5, 0.5): mean (0.5, 0.5); L1 distances 1, 1, 0 -> 2/3.
    assert weights_drift([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]) == pytest.approx(2 / 3, abs=1e-12)
    # One client never drifts.
    assert weights_drift([[0.3, 0.7]]) == 0.0
    # Against the definition on random points of Delta_3.
    gen = torch.Generator().manual_seed(1)
    lam = torch.rand(5, 3, generator=gen, dtype=F64)
    lam = lam / lam.sum(1, keepdim=True)
    direct = float((lam - lam.mean(0)).abs().sum(1).mean())
    assert weights_drift(lam.tolist()) == pytest.approx(direct, abs=1e-12)


def test_server_update_keeps_the_global_dtype() -> None:
    """theta^{t+1} = theta^t + eta_g Deltabar, accumulated in float64 and returned in the adapter's dtype."""
    algorithm = build("fedavg", server_lr=2.0)
    aggregator = algorithm.new_aggregator()
    aggregator.add({"theta": torch.tensor([0.25, 0.5])}, 1.0)
    aggregator.add({"theta": torch.tensor([0.75, 0.0])}, 3.0)
    # Deltabar = (0.25 + 2.25, 0.5 + 0) / 4 = (0.625, 0.125); theta1 = (1, 1) + 2 Deltabar = (2.25, 1.25).
    theta1 = algorithm.server_update({"theta": torch.ones(2, dtype=torch.float32)}, aggregator)
    assert theta1["theta"].dtype == torch.float32
    torch.testing.assert_close(theta1["theta"], torch.tensor([2.25, 1.25]))
