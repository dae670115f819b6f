"""The preference predictor (firm.rewards.predictor) and the alignment metrics (firm.rewards.metrics).

Shapes and masks of GPO, the regression head against least squares derived by hand, GPO reading
two groups' opposite tastes from their contexts where the global regression cannot, and the
metrics on examples small enough to compute on paper.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from firm.rewards.metrics import fairness, group_alignment, item_alignment, js_distance, mae
from firm.rewards.predictor import (
    GPO,
    PredictorSpec,
    Regression,
    build_predictor,
    expected_level,
    predictor_loss,
    score01,
)

D, K = 6, 10


def _gpo(seed: int = 0) -> GPO:
    torch.manual_seed(seed)
    model = build_predictor(PredictorSpec("gpo", D, K, d_model=32, layers=2, heads=4))
    assert isinstance(model, GPO)
    return model.eval()


def _inputs(seed: int = 0, b: int = 3, c: int = 5, q: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    context_x = torch.randn(b, c, D, generator=g)  # [B, C, D]
    context_y = torch.randint(1, K + 1, (b, c), generator=g)  # [B, C]
    context_mask = torch.ones(b, c, dtype=torch.bool)  # [B, C]
    query_x = torch.randn(b, q, D, generator=g)  # [B, Q, D]
    return context_x, context_y, context_mask, query_x


# ---- the spec ----


def test_spec_round_trips_and_rejects_bad_dicts() -> None:
    spec = PredictorSpec("gpo", 384, d_model=64, heads=8, dropout=0.1)
    assert PredictorSpec.from_dict(spec.to_dict()) == spec
    assert PredictorSpec.from_dict({**spec.to_dict(), "dropout": 0}).dropout == 0.0  # a JSON int reads as a float
    with pytest.raises(ValueError, match="unknown key"):
        PredictorSpec.from_dict({**spec.to_dict(), "width": 3})
    with pytest.raises(ValueError, match="missing key"):
        PredictorSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "levels"})
    for bad in ({"kind": "mlp"}, {"heads": 5}, {"dim": 0}, {"levels": 1}, {"dropout": 1.0}, {"hidden": -1}, {"dim": "384"}):
        with pytest.raises(ValueError, match="predictor spec"):
            PredictorSpec.from_dict({**spec.to_dict(), **bad})
    assert isinstance(build_predictor(PredictorSpec("regression", D, hidden=0)), Regression)


# ---- GPO: shapes and the attention mask ----


def test_gpo_gives_a_distribution_per_query() -> None:
    log_probs = _gpo()(*_inputs())  # [B, Q, K]
    assert log_probs.shape == (3, 4, K)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 4))


def test_gpo_is_invariant_to_the_order_of_the_context() -> None:
    model = _gpo()
    context_x, context_y, context_mask, query_x = _inputs()
    perm = torch.tensor([3, 0, 4, 1, 2])
    before = model(context_x, context_y, context_mask, query_x)
    after = model(context_x[:, perm], context_y[:, perm], context_mask[:, perm], query_x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_a_query_does_not_see_the_other_queries() -> None:
    model = _gpo()
    context_x, context_y, context_mask, query_x = _inputs()
    before = model(context_x, context_y, context_mask, query_x)
    changed = query_x.clone()
    changed[:, 0] = torch.randn(3, D) * 10
    after = model(context_x, context_y, context_mask, changed)
    torch.testing.assert_close(after[:, 1:], before[:, 1:], atol=1e-5, rtol=0)
    assert (after[:, 0] - before[:, 0]).abs().max() > 1e-3  # ...but it does see itself
    alone = model(context_x, context_y, context_mask, query_x[:, 2:3])  # a batch of one query
    torch.testing.assert_close(alone[:, 0], before[:, 2], atol=1e-5, rtol=0)


def test_a_masked_out_context_item_has_no_effect() -> None:
    model = _gpo()
    context_x, context_y, context_mask, query_x = _inputs()
    without = model(context_x[:, :4], context_y[:, :4], context_mask[:, :4], query_x)
    context_mask[:, 4] = False
    context_x[:, 4], context_y[:, 4] = 100.0, 7  # whatever a padded slot holds
    torch.testing.assert_close(model(context_x, context_y, context_mask, query_x), without, atol=1e-5, rtol=0)
    # the context matters when it is real
    assert (model(context_x[:, :4], context_y[:, :4].flip(1), context_mask[:, :4], query_x) - without).abs().max() > 1e-3


def test_no_context_predicts_from_the_query_alone() -> None:
    model = _gpo()
    context_x, context_y, context_mask, query_x = _inputs()
    empty = model(context_x[:, :0], context_y[:, :0], context_mask[:, :0], query_x)  # C = 0
    all_masked = model(context_x, context_y, torch.zeros_like(context_mask), query_x)  # every context row padded
    assert torch.isfinite(empty).all()
    torch.testing.assert_close(all_masked, empty, atol=1e-5, rtol=0)


def test_the_loss_averages_over_real_queries_only() -> None:
    model = _gpo()
    context_x, context_y, context_mask, query_x = _inputs()
    query_y = torch.tensor([[3, 5, 1, 1], [9, 2, 4, 1], [10, 1, 1, 1]])
    query_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    log_probs = model(context_x, context_y, context_mask, query_x)
    # by hand: the 6 real queries (episode, query) and their 0-based true levels; -log p averaged
    episode, query, level = [0, 0, 1, 1, 1, 2], [0, 1, 0, 1, 2, 0], [2, 4, 8, 1, 3, 9]
    expected = -log_probs[episode, query, level].mean()
    loss = predictor_loss(model, context_x, context_y, context_mask, query_x, query_y, query_mask)
    torch.testing.assert_close(loss, expected)
    none = predictor_loss(model, context_x, context_y, context_mask, query_x, query_y, torch.zeros_like(query_mask))
    assert float(none.detach()) == 0.0


# ---- the regression head ----


def test_regression_distribution_is_the_discretised_gaussian() -> None:
    torch.manual_seed(0)
    model = build_predictor(PredictorSpec("regression", D, K, hidden=8))
    assert isinstance(model, Regression)
    context_x, context_y, context_mask, query_x = _inputs()
    with torch.no_grad():
        log_probs = model(context_x, context_y, context_mask, query_x)  # [B, Q, K]
        mu, sigma = model.moments(query_x)  # [B, Q]
        other = model(context_x.flip(1), context_y.flip(1), torch.zeros_like(context_mask), query_x)
    k = np.arange(1, K + 1)
    for b, q in [(0, 0), (1, 3), (2, 1)]:
        m, s = float(mu[b, q]), float(sigma[b, q])
        mass = norm.cdf((k + 0.5 - m) / s) - norm.cdf((k - 0.5 - m) / s)
        np.testing.assert_allclose(log_probs[b, q].exp().numpy(), mass / mass.sum(), atol=1e-6)
    # the context is ignored
    torch.testing.assert_close(other, log_probs)


def test_regression_distribution_stays_finite_far_in_the_tails() -> None:
    class Fixed(Regression):
        def moments(self, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.tensor([[100.0, -50.0, 5.5, 3.0]]), torch.tensor([[0.1, 0.05, 1e6, 1e-4]])

    log_probs = Fixed(PredictorSpec("regression", D, K)).forward(*_inputs(b=1))  # [1, 4, K]
    assert torch.isfinite(log_probs).all()
    # far above the scale -> all mass on K; far below -> on 1; sigma huge -> uniform (mean 5.5); sigma tiny -> on 3
    torch.testing.assert_close(expected_level(log_probs)[0], torch.tensor([10.0, 1.0, 5.5, 3.0]))


def test_linear_regression_recovers_hand_derived_least_squares() -> None:
    """Linear mu = w.x + b and log sigma = v.x + c on three points x1 = (1,0), x2 = (0,1), x3 = (0,0).

    Both are affine in x with 3 parameters each, and 3 affinely independent points, so any values at
    the points are reachable: the Gaussian maximum likelihood is per point, mu at a point = the mean of
    its ratings (least squares) and sigma = their population std (the MLE of a Gaussian's sigma):
        x1 -> 7, 9 (x3 copies each)    mu1 = 8,   sigma1 = 1
        x2 -> 1, 2, 3 (x2 each)        mu2 = 2,   sigma2 = sqrt(((1-2)^2 + 0 + (3-2)^2) / 3) = sqrt(2/3) = 0.8165
        x3 -> 5, 6 (x2 each)           mu3 = 5.5, sigma3 = 0.5
    so b = mu3 = 5.5, w = (mu1 - b, mu2 - b) = (2.5, -3.5).
    """
    torch.manual_seed(0)
    model = build_predictor(PredictorSpec("regression", 2, K, hidden=0))
    assert isinstance(model, Regression)
    points = {(1.0, 0.0): [7, 9] * 3, (0.0, 1.0): [1, 2, 3] * 2, (0.0, 0.0): [5, 6] * 2}
    x = torch.tensor([p for p, ys in points.items() for _ in ys]).unsqueeze(0)  # [1, N, 2]
    y = torch.tensor([v for ys in points.values() for v in ys]).unsqueeze(0)  # [1, N]
    mask = torch.ones_like(y, dtype=torch.bool)
    no_context = (torch.zeros(1, 0, 2), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(400):
        loss = predictor_loss(model, *no_context, x, y, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mu, sigma = model.moments(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]]))
    torch.testing.assert_close(mu[0], torch.tensor([8.0, 2.0, 5.5]), atol=0.01, rtol=0)
    torch.testing.assert_close(sigma[0], torch.tensor([1.0, math.sqrt(2 / 3), 0.5]), atol=0.01, rtol=0)
    net = model.net
    assert isinstance(net, torch.nn.Linear)
    torch.testing.assert_close(net.weight[0].detach(), torch.tensor([2.5, -3.5]), atol=0.01, rtol=0)


# ---- conditioning beats the global model ----


def _two_groups(n: int, g: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Items of two clusters; group A rates cluster 0 at 9 and cluster 1 at 2, group B the reverse."""
    centres = torch.zeros(2, D)
    centres[0, 0], centres[1, 1] = 2.0, 2.0
    cluster = torch.arange(n) % 2  # [N]
    x = centres[cluster] + 0.3 * torch.randn(n, D, generator=g)  # [N, D]
    return {"A": (x, torch.where(cluster == 0, 9, 2)), "B": (x, torch.where(cluster == 0, 2, 9))}


def test_gpo_reads_each_groups_taste_from_its_context_and_regression_cannot() -> None:
    g = torch.Generator().manual_seed(0)
    groups = _two_groups(64, g)
    torch.manual_seed(0)
    gpo = build_predictor(PredictorSpec("gpo", D, K, d_model=32, layers=1, heads=2))
    reg = build_predictor(PredictorSpec("regression", D, K, hidden=16))
    gpo_opt, reg_opt = torch.optim.Adam(gpo.parameters(), lr=3e-3), torch.optim.Adam(reg.parameters(), lr=3e-2)
    episodes, c, q = 16, 4, 8
    for _ in range(250):
        batch = []
        for i in range(episodes):
            x, y = groups["AB"[i % 2]]
            order = torch.randperm(len(y), generator=g)[: c + q]
            batch.append((x[order], y[order]))
        x = torch.stack([bx for bx, _ in batch])  # [E, C+Q, D]
        y = torch.stack([by for _, by in batch])  # [E, C+Q]
        cm, qm = torch.ones(episodes, c, dtype=torch.bool), torch.ones(episodes, q, dtype=torch.bool)
        for model, opt in ((gpo, gpo_opt), (reg, reg_opt)):
            loss = predictor_loss(model, x[:, :c], y[:, :c], cm, x[:, c:], y[:, c:], qm)
            opt.zero_grad()
            loss.backward()
            opt.step()

    gpo.eval()
    reg.eval()
    probe = _two_groups(8, torch.Generator().manual_seed(1))["A"][0]  # fresh items, clusters 0, 1, 0, 1, ...
    probe_x = probe.unsqueeze(0)  # [1, 8, D]
    with torch.no_grad():
        for name, high in (("A", 0), ("B", 1)):
            x, y = groups[name]
            ctx_x, ctx_y = x[:4].unsqueeze(0), y[:4].unsqueeze(0)  # [1, 4, D]: two items of each cluster
            mask = torch.ones(1, 4, dtype=torch.bool)
            levels = expected_level(gpo(ctx_x, ctx_y, mask, probe_x))[0]  # [8]
            liked, disliked = levels[high::2], levels[1 - high :: 2]
            assert (liked > 7).all() and (disliked < 4).all(), (name, levels)
            reg_levels = expected_level(reg(ctx_x, ctx_y, mask, probe_x))[0]  # [8]
            assert ((reg_levels - 5.5).abs() < 0.5).all(), reg_levels  # the pooled mean of 9 and 2


# ---- expected level and score ----


def test_score01_is_0_at_level_1_and_1_at_level_k() -> None:
    onehots = torch.eye(K)[[0, K - 1, 4]]  # levels 1, K, 5
    log_probs = torch.log(onehots.clamp(min=1e-30))
    torch.testing.assert_close(expected_level(log_probs), torch.tensor([1.0, 10.0, 5.0]))
    torch.testing.assert_close(score01(log_probs), torch.tensor([0.0, 1.0, 4 / 9]))
    uniform = torch.full((2, 3, K), -math.log(K))
    torch.testing.assert_close(score01(uniform), torch.full((2, 3), 0.5))


# ---- metrics by hand ----

JS_HALF = math.sqrt(1.5 - 0.75 * math.log2(3))
"""js_distance([1, 0], [1/2, 1/2]): m = (3/4, 1/4);
KL(p||m) = log2(4/3) = 2 - log2 3;  KL(q||m) = 1/2 log2(2/3) + 1/2 log2(2) = 1 - 1/2 log2 3;
JSD = (KL(p||m) + KL(q||m)) / 2 = 3/2 - 3/4 log2 3 = 0.311278;  distance = sqrt(0.311278) = 0.557923."""


def test_js_distance_by_hand() -> None:
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert js_distance(np.array([0.2, 0.3, 0.5]), np.array([0.2, 0.3, 0.5])) == 0.0
    assert js_distance(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(JS_HALF)
    assert abs(JS_HALF - 0.557923) < 1e-6
    with pytest.raises(ValueError):
        js_distance(np.array([1.0, 0.0]), np.array([0.0, 0.0]))


def test_group_alignment_by_hand() -> None:
    """Two questions, K = 2, items interleaved; the numbers are in the comments."""
    probs = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    levels = [1, 1, 2, 2]
    questions = ["a", "b", "a", "b"]
    # "a": items 0, 2 predicted (0, 1), (1, 0), rated 1, 2 -> mean (1/2, 1/2) = histogram (1/2, 1/2): distance 0.
    # "b": items 1, 3 predicted (1, 0), (1, 0), rated 1, 2 -> mean (1, 0) vs (1/2, 1/2): distance JS_HALF.
    # Questions weighted equally: 1 - (0 + 0.557923) / 2 = 0.721039.
    assert group_alignment(probs, levels, questions) == pytest.approx(1 - JS_HALF / 2)
    assert abs((1 - JS_HALF / 2) - 0.721039) < 1e-6
    # equal weighting: a third item on "a" (a perfect one) leaves the score as it is
    more = group_alignment(np.vstack([probs, [[1.0, 0.0]]]), [*levels, 1], [*questions, "a"])
    # "a" is now items predicted (0,1), (1,0), (1,0) rated 1, 2, 1: mean (2/3, 1/3) = histogram (2/3, 1/3): still 0
    assert more == pytest.approx(1 - JS_HALF / 2)
    with pytest.raises(ValueError):
        group_alignment(probs, [1, 1, 3, 2], questions)  # level 3 with K = 2


def test_item_alignment_and_mae_by_hand() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    # item 1: (1, 0) vs onehot(1) = (1, 0): 0;  item 2: (1/2, 1/2) vs (1, 0): JS_HALF -> 1 - JS_HALF / 2
    assert item_alignment(probs, [1, 1]) == pytest.approx(1 - JS_HALF / 2)
    # expected levels 1 and 1.5 against 2 and 1: (|1 - 2| + |1.5 - 1|) / 2 = 0.75
    assert mae(probs, [2, 1]) == pytest.approx(0.75)
    # the question-level score forgives what the per-item one does not
    wrong = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert group_alignment(wrong, [1, 2], ["q", "q"]) == pytest.approx(1.0)
    assert item_alignment(wrong, [1, 2]) == pytest.approx(0.0)


def test_fairness_by_hand() -> None:
    f = fairness({"a": 0.9, "b": 0.6, "c": 0.75})
    # mean (0.9 + 0.6 + 0.75) / 3 = 0.75; worst 0.6; gap 0.3; spread sqrt((0.15^2 + 0.15^2 + 0) / 3) = sqrt(0.015)
    assert (f.mean, f.worst, f.gap, f.groups) == (pytest.approx(0.75), 0.6, pytest.approx(0.3), 3)
    assert f.spread == pytest.approx(math.sqrt(0.015))
    assert f.to_dict() == {"mean": f.mean, "worst": 0.6, "spread": f.spread, "gap": f.gap, "groups": 3}
    with pytest.raises(ValueError):
        fairness({})
