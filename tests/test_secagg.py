"""Secure aggregation (Flower's SecAgg+, firm.engines.flower.secagg): the mean of plain aggregation within the
quantisation error, dropouts at every stage, the refused combinations; in memory, then on a loopback cluster.

The bound every comparison asserts, derived from Flower's quantiser: each uploaded value x in
[-c, c] becomes an integer level of (x + c) Q / (2c), rounded up or down at random, so it comes
back off by less than one level, 2c / Q; the mean of n such values is off by less than 2c / Q
too. After one round the global adapter is theta + eta mean, stored in float32, so two runs
whose clients computed the same deltas (the same start, the same seeds) differ per value by at
most eta 2c / Q plus one float32 spacing of the value (|theta| 2**-23).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, MessageType
from flwr.app.error import Error
from flwr.common import parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from safetensors.torch import load_file

from firm.aggregation import RunningMean
from firm.algorithms.fmgda import PerObjectiveMean
from firm.config import Config, ConfigError
from firm.engines.flower import apps
from firm.engines.flower.engine import FlowerEngine
from firm.engines.flower.secagg import SecureFlowerEngine, fit_reply, from_arrays, to_arrays
from firm.robust import RoundFailed
from firm.train import RunResult, run
from firm.transport import validate_secure_aggregation
from tests.conftest import as_flower_task, tiny_config
from tests.test_flower_client import LoopbackGrid

SECURE = ("engine.secure_aggregation=true",)
THREE = ("federation.num_clients=3", "federation.clients_per_round=3", "federation.rounds=1", "aggregation.max_norm_ratio=0")
"""Three clients, one round, no norm screen: the smallest federation secure aggregation runs."""
FIVE = (
    "federation.num_clients=5",
    "federation.clients_per_round=5",
    "federation.min_clients=3",
    "federation.rounds=1",
    "aggregation.max_norm_ratio=0",
)
"""Five clients: the default threshold is 3 of 5 shares, so two may drop out (and the round counts with 3)."""


@pytest.fixture(autouse=True)
def _in_a_flower_task(monkeypatch: pytest.MonkeyPatch) -> None:
    as_flower_task(monkeypatch)
    monkeypatch.setattr(apps, "_RUNTIME", None)


def bound(config: Config, adapter: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tensor, the largest difference the quantiser allows after one round (the module docstring)."""
    step = 2 * config.engine.secagg_clipping_range / config.engine.secagg_quantization_range
    return {n: config.algorithm.server_lr * step + float(t.abs().max()) * 2**-23 for n, t in adapter.items()}


def assert_within_quantisation(config: Config, ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    """The two adapters have the same names, order, shapes and dtypes and differ by less than `bound`; the largest
    difference, to show that the values really went through the quantiser."""
    assert list(ours) == list(theirs)
    assert all(ours[n].dtype == t.dtype and ours[n].shape == t.shape for n, t in theirs.items())
    limit = bound(config, theirs)
    over = {n: float((ours[n] - t).abs().max()) for n, t in theirs.items() if float((ours[n] - t).abs().max()) > limit[n]}
    assert over == {}, (over, limit)
    assert any((t != 0).any() for n, t in theirs.items() if "lora_B" in n)  # it trained: the comparison means something
    return max(float((ours[n] - t).abs().max()) for n, t in theirs.items())


# --------------------------------------------------------------------------- an in-memory grid through the ClientApp


Fault = Callable[[int, str, Message], Message | None]
"""(client id, stage, reply) -> the reply the server receives, or None (the node died before replying). The stage is
the SecAgg+ stage of a secure round's message, or `train` for a plain round's."""


def over_the_wire(msg: Message) -> Message:
    """The message as a node receives it: deflated into Flower's wire objects and inflated again."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    delivered = cast(Message, inflate_object_from_contents(msg.object_id, contents))
    delivered.metadata.__dict__["_message_id"] = msg.metadata.message_id
    return delivered


class SecAggGrid(LoopbackGrid):
    """`LoopbackGrid` through the real ClientApp, its mods (Flower's `secaggplus_mod`) included, one Context per node.

    Each node gets its message as from the wire (`over_the_wire`): the workflow sends one content
    object to every node, and Flower's mod edits what it receives. A ClientApp that raises
    answers with an error reply, as the worker does.
    """

    def __init__(self, config: Config, fault: Fault | None = None) -> None:
        super().__init__(config)
        self.fault = fault

    def answer(self, message: Message, context: Context) -> Message | None:
        delivered = over_the_wire(message)
        if message.metadata.message_type == MessageType.QUERY:
            return apps.client_query(delivered, context)
        configs = message.content.config_records
        stage = str(configs[RECORD_KEY_CONFIGS][Key.STAGE]) if RECORD_KEY_CONFIGS in configs else "train"
        try:
            reply: Message | None = apps.client_app(message=delivered, context=context)
        except Exception as err:
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(err).__name__}: {err}"), reply_to=delivered
            )
        if self.fault is not None and reply is not None:
            reply = self.fault(int(context.node_config["client-id"]), stage, reply)
        return reply


def flower_config(tmp_path: Path, *overrides: str) -> Config:
    return tiny_config(tmp_path, "engine=flower", "engine.round_timeout=1", "output.name=run", *overrides)


def in_the_clear(config: Config) -> Config:
    """The same run without secure aggregation, in a run directory of its own."""
    return dataclasses.replace(
        config,
        engine=dataclasses.replace(config.engine, secure_aggregation=False),
        output=dataclasses.replace(config.output, name="plain"),
    )


def secure_run(config: Config, fault: Fault | None = None) -> RunResult:
    return run(config, engine=partial(SecureFlowerEngine, SecAggGrid(config, fault)))  # type: ignore[arg-type]


def plain_run(config: Config, fault: Fault | None = None) -> RunResult:
    return run(config, engine=partial(FlowerEngine, SecAggGrid(config, fault)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the layout and the hand-off


def test_uploads_travel_as_arrays_and_come_back_with_their_names_shapes_and_order() -> None:
    g = torch.Generator().manual_seed(0)
    reference = {"z.lora_A": torch.zeros(2, 5), "a.lora_B": torch.zeros(5, 2), "m": torch.zeros(3)}
    uploads = [{n: torch.randn(t.shape, generator=g) for n, t in reversed(reference.items())} for _ in range(2)]  # M = 2
    arrays = to_arrays(uploads)
    assert [a.shape for a in arrays] == [(5, 2), (3,), (2, 5)] * 2  # payload by payload, sorted names
    assert all(a.dtype == np.float64 for a in arrays)
    # what Flower's mod reads from the handler's reply: the same arrays, in order
    fitres = compat.recorddict_to_fitres(fit_reply(uploads, 8.0, client_id=0), keep_input=True)
    assert fitres.num_examples == 1  # every update weighs 1 (secagg.py, "weights")
    for got, want in zip(parameters_to_ndarrays(fitres.parameters), arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    back = from_arrays(arrays, reference, 2)
    for payload, upload in zip(back, uploads, strict=True):
        assert list(payload) == list(reference)  # the reference's order, not the upload's
        for name, t in upload.items():
            assert payload[name].shape == t.shape and torch.equal(payload[name].float(), t)
    with pytest.raises(ValueError, match="6 arrays for 1 payloads"):
        from_arrays(arrays, reference, 1)


def test_a_client_refuses_to_upload_nan_and_warns_of_clipped_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit_reply([{"a": torch.tensor([0.0, float("nan")])}], 8.0, client_id=3)
    fit_reply([{"a": torch.tensor([0.5, -9.0, 12.0])}], 8.0, client_id=3)
    assert "client 3: secure aggregation clips 2 of 3 uploaded values to +-8" in capsys.readouterr().err


@pytest.mark.parametrize("aggregator", ["one adapter", "per objective"])
def test_the_mean_added_as_one_update_steps_as_the_plain_adds(aggregator: str) -> None:
    """`add(mean, 1.0)` gives a running mean whose mean() is that mean bit for bit, and the plain adds' mean to
    float64 rounding (weights K x B x G, the same for every client)."""
    g = torch.Generator().manual_seed(0)
    payloads = 1 if aggregator == "one adapter" else 3
    deltas = [
        [{"a": torch.randn(4, 3, generator=g), "b": torch.randn(5, generator=g)} for _ in range(payloads)] for _ in range(4)
    ]
    mean = [{n: sum(d[m][n].double() for d in deltas) / len(deltas) for n in ("a", "b")} for m in range(payloads)]

    def means(agg: Any) -> list[dict[str, torch.Tensor]]:
        return [agg.mean()] if isinstance(agg, RunningMean) else [m.mean() for m in agg.means]

    plain: Any = RunningMean() if payloads == 1 else PerObjectiveMean(payloads)
    secure: Any = RunningMean() if payloads == 1 else PerObjectiveMean(payloads)
    for d in deltas:
        plain.add(d, 16.0)
    secure.add(mean, 1.0)
    for ours, theirs, exact in zip(means(secure), means(plain), mean, strict=True):
        assert all(torch.equal(ours[n], exact[n]) for n in exact)
        torch.testing.assert_close(ours, theirs, rtol=1e-15, atol=0)


# --------------------------------------------------------------------------- in memory: parity and dropouts


@pytest.mark.parametrize("algorithm", ["firm", "fmgda"])
def test_secure_round_gives_the_plain_mean_within_the_quantisation_error(tmp_path: Path, algorithm: str) -> None:
    """One round of three clients through SecAgg+ and in the clear: the same adapter within eta 2c / Q per value (one
    payload, and M payloads for fmgda), with the protocol's figures in the row and drift.updates NaN."""
    config = flower_config(tmp_path / "secure", f"algorithm={algorithm}", *THREE, *SECURE)
    secure = secure_run(config)
    plain = plain_run(in_the_clear(config))
    largest = assert_within_quantisation(config, secure.final_adapter, plain.final_adapter)
    assert largest > 0  # the values went through the quantiser, not around it
    (row,) = secure.metrics
    assert row["dropped"] == {} and sorted(row["weights"]) == ["0", "1", "2"]
    assert row["weights"] == plain.metrics[0]["weights"]  # the clients' logs still travel in the clear
    sa = row["server"]["secure_aggregation"]
    assert sa["aggregated"] == 3 and sa["num_shares"] == 3 and sa["threshold"] == 2
    assert sorted(sa["seconds"]) == sorted(sa["upload_bytes"]) == ["collect_masked_vectors", "setup", "share_keys", "unmask"]
    values = sum(t.numel() for t in plain.final_adapter.values()) * (2 if algorithm == "fmgda" else 1)
    assert sa["upload_bytes"]["collect_masked_vectors"] >= 3 * 8 * values  # 8-byte masked integers per value
    assert row["comm"]["upload_bytes"] > plain.metrics[0]["comm"]["upload_bytes"]
    assert math.isnan(row["drift"]["updates"])


def dies(at: dict[int, str], plain: Iterable[int]) -> Fault:
    """Each client of `at` dies at that SecAgg+ stage (no reply from then on); the `plain` ones die in a plain round."""
    order = [str(s) for s in (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)]
    gone = set(plain)

    def fault(client_id: int, stage: str, reply: Message) -> Message | None:
        if stage == "train":
            return None if client_id in gone else reply
        return None if client_id in at and order.index(stage) >= order.index(at[client_id]) else reply

    return fault


def test_clients_dropped_after_sharing_their_keys(tmp_path: Path) -> None:
    """Five clients, threshold 3: client 4 dies before its masked upload, client 3 after it (in the unmask stage).
    The server rebuilds 4's masks from its shares and aggregates 0, 1, 2 and 3: the plain round without 4."""
    config = flower_config(tmp_path / "secure", *FIVE, *SECURE)
    fault = dies({4: Stage.COLLECT_MASKED_VECTORS, 3: Stage.UNMASK}, plain=[4])
    secure = secure_run(config, fault)
    plain = plain_run(in_the_clear(config), fault)
    assert_within_quantisation(config, secure.final_adapter, plain.final_adapter)
    (row,) = secure.metrics
    assert sorted(row["weights"]) == ["0", "1", "2", "3"] == sorted(plain.metrics[0]["weights"])
    assert list(row["dropped"]) == ["4"] and "collect_masked_vectors stage" in row["dropped"]["4"]
    assert row["server"]["secure_aggregation"]["aggregated"] == 4


def test_clients_dropped_before_the_masks(tmp_path: Path) -> None:
    """Client 2 dies at setup, client 1 at key sharing: Flower 1.41's own unmask stage would ask for shares of them
    that no one holds and fail the round (secagg.py); here the masks and the sum involve 0, 3 and 4 only."""
    config = flower_config(tmp_path / "secure", *FIVE, *SECURE)
    fault = dies({2: Stage.SETUP, 1: Stage.SHARE_KEYS}, plain=[1, 2])
    secure = secure_run(config, fault)
    plain = plain_run(in_the_clear(config), fault)
    assert_within_quantisation(config, secure.final_adapter, plain.final_adapter)
    (row,) = secure.metrics
    assert sorted(row["weights"]) == ["0", "3", "4"] == sorted(plain.metrics[0]["weights"])
    assert "setup stage" in row["dropped"]["2"] and "share_keys stage" in row["dropped"]["1"]


def test_a_malformed_masked_upload_is_left_out_of_the_sum(tmp_path: Path) -> None:
    """Client 4's masked upload lacks an array: it is dropped before the sum and its masks removed as a dropout's,
    so the round is the plain round without 4 (before: the sum of mismatched arrays crashed the server)."""

    def short(client_id: int, stage: str, reply: Message) -> Message | None:
        if client_id == 4 and stage == "train":
            return None
        if client_id == 4 and stage == Stage.COLLECT_MASKED_VECTORS:
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            record[Key.MASKED_PARAMETERS] = list(record[Key.MASKED_PARAMETERS])[:-1]  # type: ignore[arg-type, index]
        return reply

    config = flower_config(tmp_path / "secure", *FIVE, *SECURE)
    secure = secure_run(config, short)
    plain = plain_run(in_the_clear(config), short)
    assert_within_quantisation(config, secure.final_adapter, plain.final_adapter)
    (row,) = secure.metrics
    assert sorted(row["weights"]) == ["0", "1", "2", "3"] == sorted(plain.metrics[0]["weights"])
    assert row["dropped"]["4"].startswith("rejected: masked upload of")


def test_too_many_dropouts_fail_the_round_naming_the_stage(tmp_path: Path) -> None:
    """Three of five die at the masked upload: two are left, below the threshold of 3, so no mask can be removed."""

    def fault(client_id: int, stage: str, reply: Message) -> Message | None:
        return None if client_id in (0, 1, 2) and stage in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK) else reply

    config = flower_config(tmp_path, *FIVE, *SECURE, "federation.min_clients=2", "federation.round_retries=0")
    with pytest.raises(RoundFailed) as failed:
        secure_run(config, fault)
    message = str(failed.value)
    assert "round 1 (train): secure aggregation stopped at its collect_masked_vectors stage" in message
    assert "reconstruction threshold of 3" in message and "client 0: no reply" in message
    assert "client 3: not in the sum: the SecAgg+ round stopped at its collect_masked_vectors stage" in message
    assert not (tmp_path / "run" / "final_adapter").exists()


def test_client_mode_privacy_runs_under_secure_aggregation(tmp_path: Path) -> None:
    """DP-FedAvg's client mode clips (and noises) each update on its client, before Flower's mod masks it: with the
    noise off the round is deterministic, and equals the plain client-mode round within the quantisation error."""
    dp = ("privacy.mode=client", "privacy.noise_multiplier=0", "privacy.clip_norm=0.01")
    config = flower_config(tmp_path / "secure", *THREE, *SECURE, *dp)
    secure = secure_run(config)
    plain = plain_run(in_the_clear(config))
    assert_within_quantisation(config, secure.final_adapter, plain.final_adapter)
    assert secure.metrics[0]["privacy"] == plain.metrics[0]["privacy"]


# --------------------------------------------------------------------------- refused combinations


REFUSED = {
    "engine.name=inprocess": "engine.secure_aggregation: SecAgg+ runs between Flower SuperNodes",
    "aggregation.rule=median": "aggregation.rule: 'median' needs every update",
    "aggregation.rule=trimmed_mean": "aggregation.rule: 'trimmed_mean' needs every update",
    "aggregation.max_norm_ratio=10": "aggregation.max_norm_ratio: the norm screen needs each update's norm",
    "aggregation.clip_norm=1": "aggregation.clip_norm: the server cannot clip an update it never sees",
    "compression.kind=int8": "compression.kind: int8 uploads cannot be summed",
    "algorithm.name=fedcmoo": "algorithm.name: fedcmoo uploads each client's probe",
    "federation.clients_per_round=2": "federation.clients_per_round: secure aggregation needs 3 or more",
    "engine.secagg_num_shares=2": "engine.secagg_num_shares: 0 (every client of the round) or 3 or more",
    "engine.secagg_num_shares=4": "engine.secagg_num_shares: below federation.clients_per_round it must be odd",
    "engine.secagg_num_shares=7": "engine.secagg_num_shares: 7 is more than federation.clients_per_round = 5",
    "engine.secagg_reconstruction_threshold=5": "engine.secagg_reconstruction_threshold: 5 must be below the 5 shares",
    "engine.secagg_reconstruction_threshold=1": "engine.secagg_reconstruction_threshold: 0 (a majority of the shares) or 2",
    "engine.secagg_clipping_range=0": "engine.secagg_clipping_range: must be > 0",
    "engine.secagg_quantization_range=1000000000": "engine.secagg_quantization_range: 5 clients x 1000000000 levels",
}


@pytest.mark.parametrize("override", sorted(REFUSED))
def test_combinations_that_need_individual_updates_are_refused(tmp_path: Path, override: str) -> None:
    """Each refused with one line naming the key: by the config's validation when the engine section alone tells
    (`firm.transport.validate_engine`), else by `validate_secure_aggregation` (submit and the engine call it)."""
    try:
        config = tiny_config(
            tmp_path, "engine=flower", *THREE, "federation.num_clients=5", "federation.clients_per_round=5", *SECURE, override
        )
    except ConfigError as err:
        message = str(err)
    else:
        with pytest.raises(ConfigError) as refused:
            validate_secure_aggregation(config)
        message = str(refused.value)
    assert REFUSED[override] in message and "\n" not in message


def test_the_defaults_with_three_clients_and_no_norm_screen_are_accepted(tmp_path: Path) -> None:
    validate_secure_aggregation(tiny_config(tmp_path, "engine=flower", *THREE, *SECURE))
    for algorithm in ("fedavg", "mgda", "fmgda"):
        validate_secure_aggregation(tiny_config(tmp_path, "engine=flower", *THREE, *SECURE, f"algorithm={algorithm}"))


def test_the_plain_engine_refuses_to_run_a_secure_config_in_the_clear(tmp_path: Path) -> None:
    config = flower_config(tmp_path, *THREE, *SECURE)
    with pytest.raises(ValueError, match=r"runs on firm\.engines\.flower\.secagg\.SecureFlowerEngine"):
        plain_run(config)


def test_submit_refuses_before_anything_connects(tmp_path: Path) -> None:
    from firm.engines.flower.submit import submit

    config = tiny_config(tmp_path, "engine=flower", *THREE, *SECURE)
    config = dataclasses.replace(config, aggregation=dataclasses.replace(config.aggregation, max_norm_ratio=10.0))
    with pytest.raises(ConfigError, match=r"aggregation\.max_norm_ratio"):
        submit(config, quiet=True)


# --------------------------------------------------------------------------- on a loopback cluster


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(next((run_dir / "final_adapter").glob("*.safetensors")))


def _after_round(run_dir: Path, round_idx: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"round_{round_idx:04d}" / "global.safetensors")


CLUSTER_RUNS = {
    "plain": THREE,
    "secure": (*THREE, *SECURE),
    "plain drop": (
        "federation.num_clients=4",
        "federation.clients_per_round=4",
        "federation.min_clients=3",
        "federation.rounds=2",
        "aggregation.max_norm_ratio=0",
    ),
}
CLUSTER_RUNS["secure drop"] = (*CLUSTER_RUNS["plain drop"], *SECURE)
"""On four SuperNodes, node 3's prompt file broken: three healthy clients in the clear and through SecAgg+, and all four
for two rounds, where client 3 passes the key stages and fails at its masked upload (its ClientApp cannot read its
prompts), so the server must rebuild its masks from the others' shares."""


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | BaseException]:
    """`CLUSTER_RUNS` at once on one loopback cluster (SuperLink, 4 SuperNodes with warm workers); stopped after."""
    from firm.engines.flower import local
    from firm.engines.flower.submit import submit
    from tests.test_flower import _concurrently

    root = tmp_path_factory.mktemp("secagg")
    bad = root / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": \n')
    with local.local_cluster(
        root / "state", 4, superlink=f"127.0.0.1:{local.free_port()}", prompt_files=["", "", "", str(bad)]
    ) as c:
        jobs = {
            name: partial(
                submit,
                tiny_config(
                    root / name.replace(" ", "-"),
                    "engine=flower",
                    f'engine.superlink="{c.superlink}"',
                    "engine.round_timeout=120",
                    "output.name=run",
                    *overrides,
                ),
                quiet=True,
            )
            for name, overrides in CLUSTER_RUNS.items()
        }
        return _concurrently(jobs)  # type: ignore[return-value]


def _run_dir(runs: dict[str, Path | BaseException], name: str) -> Path:
    outcome = runs[name]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@pytest.mark.slow  # a loopback cluster of 9 processes and 4 concurrent runs: about 2 minutes on 2 cores
def test_secure_aggregation_on_loopback_matches_the_plain_flower_run(cluster_runs: dict[str, Path | BaseException]) -> None:
    """SuperNodes, warm workers and Flower's SecAgg+ for real: the final adapter is the plain Flower run's within
    eta 2c / Q per value, and the row carries the protocol's bytes and seconds. The plain run, through the same
    ClientApp and its mod, is still the in-process run (tests/test_flower.py's parity)."""
    secure, plain = _run_dir(cluster_runs, "secure"), _run_dir(cluster_runs, "plain")
    inproc = _final(run(tiny_config(secure.parent.parent / "inprocess", *THREE, "output.name=run")).run_dir)
    assert max(float((_final(plain)[n] - t).abs().max()) for n, t in inproc.items()) < 1e-6
    config = tiny_config(secure.parent, "engine=flower", *CLUSTER_RUNS["secure"])
    largest = assert_within_quantisation(config, _final(secure), _final(plain))
    assert largest > 0
    (row,) = _rows(secure)
    assert row["dropped"] == {} and sorted(row["weights"]) == ["0", "1", "2"]
    sa = row["server"]["secure_aggregation"]
    assert sa["aggregated"] == 3 and sa["threshold"] == 2 and all(s > 0 for s in sa["seconds"].values())
    assert row["comm"]["upload_bytes"] > _rows(plain)[0]["comm"]["upload_bytes"]


@pytest.mark.slow
def test_secure_aggregation_on_loopback_survives_a_client_that_fails_after_sharing_keys(
    cluster_runs: dict[str, Path | BaseException],
) -> None:
    """Client 3 fails at its masked upload in both rounds: each round aggregates 0, 1 and 2 (threshold 3 of 4), round 1
    as the plain run does within the quantisation error; the mod's state goes from a failed stage to the next setup."""
    secure, plain = _run_dir(cluster_runs, "secure drop"), _run_dir(cluster_runs, "plain drop")
    config = tiny_config(secure.parent, "engine=flower", *CLUSTER_RUNS["secure drop"])
    assert_within_quantisation(config, _after_round(secure, 1), _after_round(plain, 1))
    for row, plain_row in zip(_rows(secure), _rows(plain), strict=True):
        assert sorted(row["weights"]) == ["0", "1", "2"] == sorted(plain_row["weights"])
        assert list(row["dropped"]) == ["3"] and "collect_masked_vectors stage" in row["dropped"]["3"]
        assert "invalid JSON" in row["dropped"]["3"]  # the node's own error reached the server
        assert row["server"]["secure_aggregation"]["threshold"] == 3
    assert json.loads((secure / "summary.json").read_text())["status"] == "completed"
