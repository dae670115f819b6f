"""Client-level differential privacy (firm.privacy): clipping, the noise, the accountant, the budget stop, the refusals."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
import torch
from scipy import stats

from firm.aggregation import RunningMean
from firm.config import Config, ConfigError
from firm.privacy.ledger import PrivacyLedger
from firm.privacy.mechanism import add_noise, clip_update, noise_share, update_norm
from firm.privacy.wrap import NoisingAggregator, PrivateAlgorithm, UniformAggregator, build_algorithm
from firm.rundir import RunDirError
from firm.train import resume, run
from firm.validation import load_config
from tests.conftest import tiny_config, tiny_overrides
from tests.test_flower_client import _in_a_flower_task  # noqa: F401 (a fixture)


def _update(scale: float, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"a": torch.randn(3, 4, generator=g) * scale, "b": torch.randn(5, generator=g) * scale},
        {"a": torch.randn(3, 4, generator=g) * scale, "b": torch.randn(5, generator=g) * scale},
    ]


def _private(mode: str, **privacy: Any) -> Config:
    base = Config()
    fields = {"mode": mode, "clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-3, **privacy}
    return dataclasses.replace(
        base,
        privacy=dataclasses.replace(base.privacy, **fields),
        federation=dataclasses.replace(base.federation, num_clients=10, clients_per_round=4),
    )


# --------------------------------------------------------------------------- the mechanism


@pytest.mark.parametrize("scale", [0.01, 0.5, 3.0, 100.0])
def test_clipping_bounds_every_update_exactly(scale: float) -> None:
    uploads = _update(scale)
    before = update_norm(uploads)
    clipped, norm = clip_update(uploads, clip_norm=1.0)
    assert norm == pytest.approx(before, rel=1e-12)
    after = update_norm(clipped)
    if before <= 1.0:  # untouched, bit for bit
        assert all(torch.equal(c[k], u[k]) for c, u in zip(clipped, uploads, strict=True) for k in u)
    else:  # on the sphere of radius C, every payload scaled by the same factor C / ||Delta||
        assert after == pytest.approx(1.0, rel=1e-6) and after <= 1.0 + 1e-6
        for c, u in zip(clipped, uploads, strict=True):
            for k in u:
                assert torch.allclose(c[k], u[k] * (1.0 / before), rtol=1e-6, atol=0)


def test_the_norm_is_taken_over_all_payloads_together() -> None:
    one = [{"a": torch.tensor([3.0, 0.0])}]
    two = [{"a": torch.tensor([3.0, 0.0])}, {"a": torch.tensor([0.0, 4.0])}]
    assert update_norm(one) == 3.0 and update_norm(two) == 5.0
    clipped, _ = clip_update(two, clip_norm=1.0)
    assert torch.allclose(clipped[0]["a"], torch.tensor([0.6, 0.0])) and torch.allclose(clipped[1]["a"], torch.tensor([0.0, 0.8]))


def test_the_noise_has_the_configured_standard_deviation() -> None:
    """n = 400,000 noise coordinates. The sample variance's chi-square test, two-sided at a false-alarm rate of
    1e-6, accepts the configured std; the same test rejects a std 1 % off (its power, checked on the same draw)."""
    std, n = 0.37, 400_000
    zeros = [{"w": torch.zeros(n)}]
    noise = add_noise(zeros, std, torch.Generator().manual_seed(12345))[0]["w"].double().numpy()
    alpha = 1e-6

    def accepts(sigma: float) -> bool:
        stat = (n - 1) * noise.var(ddof=1) / sigma**2
        low, high = stats.chi2.ppf(alpha / 2, n - 1), stats.chi2.ppf(1 - alpha / 2, n - 1)
        return bool(low <= stat <= high)

    assert accepts(std)
    assert not accepts(std * 1.01) and not accepts(std * 0.99)
    # the mean: |z| below the two-sided 1e-6 quantile of the normal
    assert abs(noise.mean()) / (std / math.sqrt(n)) < stats.norm.ppf(1 - alpha / 2)


def test_noise_share_sums_to_sigma_c_over_a_round() -> None:
    # k shares of variance (sigma C)^2 / k add up to (sigma C)^2 on the sum
    assert 4 * noise_share(2.0, 1.5, 4) ** 2 == pytest.approx((1.5 * 2.0) ** 2)


# --------------------------------------------------------------------------- the accountant


def _dp_accounting_epsilon(population: int, sample: int, sigma: float, rounds: int, delta: float) -> float:
    """Epsilon from dp-accounting directly: replace-one adjacency, sampling without replacement, sensitivity 2C."""
    from dp_accounting.rdp import RdpAccountant

    acc = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(population, sample, dp_accounting.GaussianDpEvent(sigma / 2))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(("sigma", "rounds"), [(1.0, 5), (2.5, 8), (0.8, 1)])
def test_epsilon_matches_dp_accounting_computed_independently(sigma: float, rounds: int) -> None:
    ledger = PrivacyLedger(_private("server", noise_multiplier=sigma))
    for _ in range(rounds):
        row = ledger.record(aggregated=4)
    expected = _dp_accounting_epsilon(10, 4, sigma, rounds, 1e-3)
    assert row["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert ledger.epsilon_after(4) > ledger.epsilon


def test_a_round_with_dropouts_is_accounted_at_the_noise_it_had() -> None:
    ledger = PrivacyLedger(_private("server", noise_multiplier=2.0))
    ledger.record(aggregated=1)  # one of 4 noise shares: noise std sigma C / 2 on the sum
    assert ledger.epsilon == pytest.approx(_dp_accounting_epsilon(10, 4, 2.0 * math.sqrt(1 / 4), 1, 1e-3), rel=1e-9)
    assert ledger.record(aggregated=0)["epsilon"] == pytest.approx(ledger.epsilon)  # nothing released: nothing spent


def test_no_noise_means_no_guarantee() -> None:
    ledger = PrivacyLedger(_private("server", noise_multiplier=0.0))
    assert ledger.record(aggregated=4)["epsilon"] is None and ledger.epsilon == math.inf


def test_the_ledger_state_resumes_exactly() -> None:
    config = _private("server", noise_multiplier=1.3)
    a, b = PrivacyLedger(config), PrivacyLedger(config)
    for k in (4, 3, 4):
        a.record(k)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # through JSON, as in a checkpoint
    assert b.epsilon == a.epsilon and b.releases == 3
    assert b.record(4)["epsilon"] == a.record(4)["epsilon"]
    with pytest.raises(ValueError):
        PrivacyLedger(_private("server", delta=1e-4)).load_state_dict(a.state_dict())


def test_the_budget_check_names_the_round_and_the_figures() -> None:
    budget = _dp_accounting_epsilon(10, 4, 4.0, 2, 1e-3) * 1.001  # room for exactly two rounds of 4
    ledger = PrivacyLedger(_private("server", noise_multiplier=4.0, max_epsilon=budget))
    for round_idx in (1, 2):
        assert ledger.stop_reason(round_idx) is None
        ledger.record(4)
    reason = ledger.stop_reason(3)
    assert reason is not None and "round 3 would take epsilon" in reason and f"privacy.max_epsilon = {budget:g}" in reason
    assert ledger.epsilon <= budget < ledger.epsilon_after(4)


# --------------------------------------------------------------------------- the wrapper


def test_server_mode_adds_each_update_clipped_with_weight_one() -> None:
    # std 0: the aggregate is the plain mean of the clipped updates, whatever the reported sample counts
    agg = NoisingAggregator(RunningMean(), clip_norm=1.0, std=0.0, generator=torch.Generator())
    small, large = {"a": torch.tensor([0.3, 0.4])}, {"a": torch.tensor([6.0, 8.0])}
    agg.add([small], 1.0)
    agg.add([large], 7.0)
    assert torch.allclose(agg.inner.mean()["a"].float(), (small["a"] + large["a"] / 10) / 2)
    assert agg.stats["privacy"] == {"clipped": 1, "mean_norm": pytest.approx((0.5 + 10.0) / 2)}


def test_server_mode_noise_is_the_mechanisms_draw() -> None:
    upload = {"a": torch.tensor([6.0, 8.0, 0.0])}
    agg = NoisingAggregator(RunningMean(), clip_norm=1.0, std=0.5, generator=torch.Generator().manual_seed(7))
    agg.add([upload], 1.0)
    expected = add_noise([{"a": upload["a"] / 10}], 0.5, torch.Generator().manual_seed(7))[0]["a"]
    assert torch.allclose(agg.inner.mean()["a"].float(), expected, atol=1e-7)


class _Fixed:
    """An algorithm whose client update is a fixed two-payload delta: the wrapper under test sees a known input."""

    name, uses_preference = "fixed", True

    @property
    def shape(self) -> Any:
        from firm.algorithms.protocol import RoundShape

        return RoundShape(uploads=2)

    def client_update(self, params: Any, sample_problem: Any, client_state: Any, timer: Any = None) -> Any:
        from firm.algorithms.protocol import ClientUpdate

        return ClientUpdate(uploads=_update(5.0), num_samples=8, mean_weights=[0.5, 0.5])

    def new_aggregator(self) -> Any:
        return RunningMean()

    def server_update(self, global_adapter: Any, aggregator: Any) -> Any:
        return aggregator


def test_client_mode_clips_and_noises_the_uploads_before_they_leave() -> None:
    config = _private("client", clip_norm=1.0, noise_multiplier=0.0)
    wrapped = PrivateAlgorithm(_Fixed(), config)  # type: ignore[arg-type]
    update = wrapped.client_update({}, lambda step: None, {})  # type: ignore[arg-type,return-value]
    assert update_norm(update.uploads) == pytest.approx(1.0, rel=1e-6)  # sigma 0: clipped only
    noisy = PrivateAlgorithm(_Fixed(), _private("client", noise_multiplier=2.0))  # type: ignore[arg-type]
    released = noisy.client_update({}, lambda step: None, {}).uploads  # type: ignore[arg-type,return-value]
    diff = torch.cat([(r[k] - c[k]).flatten() for r, c in zip(released, update.uploads, strict=True) for k in c])
    assert 0.3 < float(diff.std()) < 2.0  # noise of std 2 x 1 / sqrt(4) = 1 on 34 coordinates
    assert isinstance(noisy.new_aggregator(), UniformAggregator)
    assert noisy.uses_preference and noisy.name == "fixed" and noisy.shape.uploads == 2


def test_off_builds_the_plain_algorithm() -> None:
    from firm.algorithms import Firm

    assert isinstance(build_algorithm(Config()), Firm)
    assert isinstance(build_algorithm(_private("server")), PrivateAlgorithm)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["privacy.clip_norm=0"], "privacy.clip_norm: must be > 0"),
        (["privacy.noise_multiplier=-1"], "privacy.noise_multiplier: must be >= 0"),
        (["privacy.delta=0.6"], "privacy.delta: must be in (0, 1 / federation.num_clients"),
        (["privacy.max_epsilon=-1"], "privacy.max_epsilon"),
        (["algorithm.name=fedcmoo"], "fedcmoo uploads probes"),
        (["algorithm.name=centralized"], "non-federated reference"),
        (["aggregation.rule=median", "federation.num_clients=4", "federation.clients_per_round=3"], "aggregation.rule = median"),
        (["aggregation.clip_norm=1"], "aggregation.clip_norm is a second clip"),
        (["aggregation.max_norm_ratio=5"], "the norm screen"),
        (["privacy.mode=maybe"], "privacy.mode"),
    ],
)
def test_combinations_that_cannot_work_are_refused_with_one_line(tmp_path: Path, overrides: list[str], fragment: str) -> None:
    base = [*tiny_overrides(tmp_path), "privacy.mode=server", "privacy.delta=1e-3", "aggregation.max_norm_ratio=0"]
    with pytest.raises(ConfigError) as err:
        load_config(None, [*base, *overrides])
    assert fragment in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- runs


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


PRIVATE = ["privacy.delta=1e-3", "privacy.clip_norm=0.5", "aggregation.max_norm_ratio=0", "federation.rounds=3"]


@pytest.mark.parametrize("mode", ["server", "client"])
def test_a_private_run_reports_epsilon_every_round(tmp_path: Path, mode: str) -> None:
    result = run(tiny_config(tmp_path, f"privacy.mode={mode}", "privacy.noise_multiplier=1.5", *PRIVATE))
    eps = [r["privacy"]["epsilon"] for r in _rows(result.run_dir)]
    assert eps == pytest.approx([_dp_accounting_epsilon(2, 2, 1.5, t, 1e-3) for t in (1, 2, 3)], rel=1e-9)
    summary = result.summary["privacy"]
    assert summary["epsilon"] == pytest.approx(eps[-1]) and summary["stopped"] is None and summary["mode"] == mode
    assert ("per_update_epsilon" in summary) == (mode == "client")
    for name, t in result.final_adapter.items():  # noise reached the model
        assert torch.isfinite(t).all(), name


def test_the_budget_stops_the_run_cleanly_with_a_checkpoint(tmp_path: Path) -> None:
    budget = _dp_accounting_epsilon(2, 2, 2.0, 2, 1e-3) * 1.001  # room for exactly two rounds
    result = run(
        tiny_config(tmp_path, "privacy.mode=server", "privacy.noise_multiplier=2.0", f"privacy.max_epsilon={budget}", *PRIVATE)
    )
    assert [r["round"] for r in _rows(result.run_dir)] == [1, 2]
    assert result.summary["status"] == "stopped" and result.summary["rounds"] == 2
    assert "round 3 would take epsilon" in result.summary["privacy"]["stopped"]
    assert (result.run_dir / "checkpoints" / "round_0002").is_dir() and (result.run_dir / "final_adapter").is_dir()
    with pytest.raises(RunDirError, match="privacy budget"):
        resume(result.run_dir)


def test_an_interrupted_private_run_resumes_the_ledger_exactly(tmp_path: Path) -> None:
    full = run(tiny_config(tmp_path, "privacy.mode=client", "privacy.noise_multiplier=1.0", "output.name=full", *PRIVATE))
    part = run(tiny_config(tmp_path, "privacy.mode=client", "privacy.noise_multiplier=1.0", "output.name=part", *PRIVATE)).run_dir
    for d in ("final_adapter", "checkpoints/round_0003", "checkpoints/round_0002"):  # died after round 1's checkpoint
        shutil.rmtree(part / d)
    (part / "summary.json").unlink()
    resumed = resume(part)
    assert [r["privacy"] for r in _rows(part)] == [r["privacy"] for r in _rows(full.run_dir)]
    assert resumed.summary["privacy"]["epsilon"] == full.summary["privacy"]["epsilon"]
    assert np.isfinite(resumed.summary["privacy"]["epsilon"])


@pytest.mark.usefixtures("_in_a_flower_task")
@pytest.mark.parametrize("mode", ["server", "client"])
def test_privacy_on_the_flower_engine_is_the_in_process_run(tmp_path: Path, mode: str) -> None:
    """Through the real FlowerEngine and ClientApp (messages answered in this process): `server` mode clips in the
    ServerApp's aggregator, `client` mode on the node. At noise 0 (clipping only) both give the in-process adapter,
    and a clip that binds changes it."""
    from tests.test_flower_client import LoopbackGrid, _flower_config, _flower_run

    common = [*PRIVATE, f"privacy.mode={mode}", "privacy.noise_multiplier=0", "privacy.clip_norm=1e-3", "federation.rounds=2"]
    config = _flower_config(tmp_path / "flower", *common, "output.name=run")
    ours = _flower_run(config, LoopbackGrid(config))
    theirs = run(tiny_config(tmp_path / "inprocess", *common, "output.name=run"))
    unclipped = run(tiny_config(tmp_path / "plain", "aggregation.max_norm_ratio=0", "federation.rounds=2", "output.name=run"))
    assert max((ours.final_adapter[k] - t).abs().max().item() for k, t in theirs.final_adapter.items()) < 1e-6
    assert max((unclipped.final_adapter[k] - t).abs().max().item() for k, t in theirs.final_adapter.items()) > 1e-4
    assert [r["privacy"]["releases"] for r in ours.metrics] == [1, 2]
