"""The Flower engine: converters, and real loopback runs (SuperLink + SuperNodes) against the in-process engine.

The loopback runs use two clusters: one parity run per round shape, an int8-compressed run and a run
short of a client go at once on one shared cluster with TLS and SuperNode authentication; sites with their
own prompt files, one of them SIGKILLed after round 1, run on a cluster of their own. Each test
checks its own run's outcome.
"""

from __future__ import annotations

import json
import runpy
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from firm.compression import compress
from firm.config import Config, ConfigError
from firm.engines.flower import local
from firm.engines.flower.records import (
    adapter_to_record,
    config_to_run_config,
    payload_bytes,
    payload_to_record,
    record_to_adapter,
    run_config_to_config,
)
from firm.engines.flower.submit import FlowerRunError, app_pyproject, submit
from firm.train import run
from firm.validation import load_config
from tests.conftest import tiny_config
from tests.test_compression import INT8, random_adapter

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- converters


def test_run_config_round_trip_keeps_every_field() -> None:
    config = load_config(
        None,
        [
            'objectives.names=["positiveness", "conciseness"]',
            "objectives.preference=[0.25, 0.75]",
            "engine=flower",
            "algorithm=fmgda",
        ],
    )
    flat = config_to_run_config(config)
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())  # Flower's UserConfigValue
    assert flat["objectives.preference"] == "[0.25, 0.75]"
    assert run_config_to_config(flat) == config
    assert run_config_to_config(config_to_run_config(Config())) == Config()


def test_run_config_errors_name_the_key() -> None:
    flat = config_to_run_config(Config())
    with pytest.raises(ConfigError, match=r"unknown key 'nosuch\.key'"):
        run_config_to_config({**flat, "nosuch.key": 1})
    with pytest.raises(ConfigError, match=r"objectives\.names: expected a JSON list"):
        run_config_to_config({**flat, "objectives.names": "[positiveness"})
    with pytest.raises(ConfigError, match=r"federation\.rounds"):
        run_config_to_config({**flat, "federation.rounds": "three"})


def test_generated_app_carries_the_config() -> None:
    import tomllib

    config = load_config(None, ["federation.rounds=3"])
    project = tomllib.loads(app_pyproject(config))
    app = project["tool"]["flwr"]["app"]
    assert app["components"]["clientapp"] == "firm.engines.flower.apps:client_app"
    assert run_config_to_config(app["config"]) == config  # quoted dotted keys: Flower's run-config as is


def test_adapter_record_round_trip_is_exact() -> None:
    g = torch.Generator().manual_seed(0)
    adapter = {
        "layers.0.q.lora_A": torch.randn(4, 16, generator=g),
        "layers.0.q.lora_B": torch.zeros(16, 4),
        "v": torch.randn(3).double(),
    }
    back = record_to_adapter(adapter_to_record(adapter))
    assert list(back) == list(adapter)
    for name, tensor in adapter.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor)


def test_payload_bytes_count_each_distinct_object_once() -> None:
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    g = torch.Generator().manual_seed(0)
    trained = {"a": torch.randn(8, 32, generator=g), "b": torch.randn(32, 8, generator=g), "c": torch.randn(32, 8, generator=g)}
    record = adapter_to_record(trained)
    size = payload_bytes(record)
    assert size == sum(len(o.deflate()) for o in get_all_nested_objects(record).values())
    data = sum(t.numel() * 4 for t in trained.values())
    assert data < size < data + 2000  # the tensors plus small headers
    assert payload_bytes(adapter_to_record({k: v * 2 for k, v in trained.items()})) == size  # distinct values: size from shapes
    zeros = {"a": trained["a"], "b": torch.zeros(32, 8), "c": torch.zeros(32, 8)}  # identical B matrices travel once
    assert payload_bytes(adapter_to_record(zeros)) < size - 1000


# --------------------------------------------------------------------------- loopback runs


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(next((run_dir / "final_adapter").glob("*.safetensors")))


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _distinct_payload(adapter: dict[str, torch.Tensor]) -> int:
    """Payload bytes of an adapter-shaped record whose tensors all differ (as trained deltas do)."""
    g = torch.Generator().manual_seed(1)
    return payload_bytes(adapter_to_record({k: torch.randn(v.shape, generator=g) for k, v in adapter.items()}))


def _flower_config(tmp_path: Path, cluster: local.Cluster, *overrides: str) -> Config:
    extra = [f"engine.root_certificates={cluster.root_certificates!r}".replace("'", '"')] if cluster.root_certificates else []
    return tiny_config(
        tmp_path, "engine=flower", f'engine.superlink="{cluster.superlink}"', "engine.round_timeout=60", *extra, *overrides
    )


ALGORITHMS = ["firm", "fmgda", "fedcmoo"]
"""One algorithm per round shape: one payload, M payloads, a probe first (fedavg and mgda: tests/test_flower_client.py)."""
PALETTE = (
    "algorithm=fedavg",
    "palette.targets=positiveness=+0.02,conciseness=+0.003",
    "palette.prompts_per_client=6",
    "federation.rounds=1",
)
"""Two targets that both bind on the tiny model's samples, in 10 statistics rounds (about 5 s each on Flower); FedAvg
steps with exactly the preference, so the rows show what the nodes trained with."""
T = TypeVar("T")


def _concurrently(jobs: dict[str, Callable[[], T]]) -> dict[str, T | BaseException]:
    """Run each job in its own thread; its result, or the exception it raised, under its key.

    The loopback runs spend most of their wall time waiting (process start-up, the SuperNodes'
    3 s pull interval, `engine.round_timeout`), so overlapping them costs little CPU.
    """

    def catch(job: Callable[[], T]) -> T | BaseException:
        try:
            return job()
        except BaseException as err:
            return err

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {key: pool.submit(catch, job) for key, job in jobs.items()}
    return {key: future.result() for key, future in futures.items()}


def _result(outcome: T | BaseException) -> T:
    """A `_concurrently` result, re-raising the job's exception in the test that needs it."""
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _check_parity(flower_dir: Path, tmp_path: Path, algorithm: str) -> None:
    """The Flower run in `flower_dir` against the same config run in process: adapter, metrics, bytes."""
    inproc_config = tiny_config(tmp_path / "inprocess", f"algorithm={algorithm}", "output.name=run")
    inproc = run(inproc_config)
    ours, theirs = _adapter(flower_dir), _adapter(inproc.run_dir)
    assert list(ours) == list(theirs)
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-6
    assert any((theirs[k] != 0).any() for k in theirs if "lora_B" in k)  # it trained: the comparison means something
    flower_rows, inproc_rows = _rows(flower_dir), _rows(inproc.run_dir)
    assert [sorted(r) for r in flower_rows] == [sorted(r) for r in inproc_rows]  # the same metrics schema
    assert [r["clients"] for r in flower_rows] == [r["clients"] for r in inproc_rows]
    from firm.policy import build_policy

    server = build_policy(inproc_config.model, inproc_config.lora, inproc_config.federation.seed)
    initial = payload_bytes(adapter_to_record(server.get_adapter()))  # round 1 broadcasts the fresh adapter
    per_upload = _distinct_payload(server.get_adapter())
    for row in flower_rows:
        n = len(row["clients"])
        if algorithm == "firm":  # one trained delta per client, every tensor distinct
            assert row["comm"]["upload_bytes"] == per_upload * n
            sent = initial if row["round"] == 1 else per_upload
            assert row["comm"]["download_bytes"] == sent * n
        else:  # M per-objective payloads (fmgda) or a probe and an update (fedcmoo): some chunks may coincide
            assert 0 < row["comm"]["upload_bytes"] <= 2 * per_upload * n
        assert row["dropped"] == {}
        assert row["eval"] == pytest.approx(inproc_rows[row["round"] - 1]["eval"], abs=1e-6)
    assert (flower_dir / "checkpoints" / "round_0002").is_dir()
    assert (flower_dir / "report.html").is_file() == (algorithm == "firm")  # the ServerApp writes it where asked


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One SuperLink serving HTTPS with SuperNode authentication, and two SuperNodes: the parity runs' federation."""
    make_test_certs = runpy.run_path(str(ROOT / "scripts" / "make_test_certs.py"))["make_test_certs"]
    certs = tmp_path_factory.mktemp("certs")
    make_test_certs(certs, 2)
    state = tmp_path_factory.mktemp("flower")
    with local.local_cluster(state, 2, superlink=f"127.0.0.1:{local.free_port()}", tls=certs) as c:
        yield c
    assert not any(local._alive(p.pid) for p in c.processes)  # everything it started is gone


def _report(algorithm: str) -> list[str]:
    """Only the firm parity run draws the report on the ServerApp (seconds of CPU each, and the same code for all)."""
    return [f"output.report={str(algorithm == 'firm').lower()}", "output.name=run"]


@pytest.fixture(scope="module")
def parity_runs(cluster: local.Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | BaseException]:
    """Each of `ALGORITHMS` on Flower (2 clients x 2 rounds), an int8 run and a run short of a client, all at once.

    The SuperNodes serve the runs' messages interleaved, one at a time, and each warm worker
    switches between the runs' configs: each run must still give exactly its in-process result.
    """
    root = tmp_path_factory.mktemp("parity")
    jobs: dict[str, Callable[[], Path]] = {
        algorithm: partial(
            submit, _flower_config(root / algorithm, cluster, f"algorithm={algorithm}", *_report(algorithm)), quiet=True
        )
        for algorithm in ALGORITHMS
    }
    jobs["firm int8"] = partial(
        submit, _flower_config(root / "int8", cluster, "compression.kind=int8", "output.name=run"), quiet=True
    )
    # and a run that asks for a third client the cluster does not have (test_a_run_short_of_clients_fails_clearly)
    short = ["federation.num_clients=3", "federation.clients_per_round=3", "federation.rounds=1", "engine.round_timeout=8"]
    jobs["short of clients"] = partial(submit, _flower_config(root / "short", cluster, *short, "output.name=run"), quiet=True)
    return {**_concurrently(jobs), "short of clients dir": root / "short" / "run"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_flower_engine_matches_in_process(tmp_path: Path, parity_runs: dict[str, Path | BaseException], algorithm: str) -> None:
    _check_parity(_result(parity_runs[algorithm]), tmp_path, algorithm)


def test_each_node_loaded_the_model_once(cluster: local.Cluster, parity_runs: dict[str, Path | BaseException]) -> None:
    """After the parity runs (interleaved, two rounds each), each warm worker built its model once."""
    assert all(isinstance(parity_runs[a], Path) for a in ALGORITHMS), parity_runs
    for i in range(2):
        log = Path(cluster.state_dir / f"worker-{i}.log").read_text()
        assert log.count("loading model tiny") == 1, log[-2000:]


def test_flower_engine_with_tls_and_node_auth(
    tmp_path: Path, cluster: local.Cluster, parity_runs: dict[str, Path | BaseException]
) -> None:
    """The parity runs went through HTTPS and authenticated SuperNodes; without the CA a run is refused."""
    assert cluster.root_certificates.endswith("ca.crt")
    _check_parity(_result(parity_runs["firm"]), tmp_path, "firm")
    with pytest.raises(FlowerRunError):  # without the CA the connection is refused: TLS is really on
        submit(
            tiny_config(tmp_path / "plain", "engine=flower", f'engine.superlink="{cluster.superlink}"', "output.name=plain"),
            quiet=True,
        )


def test_flower_run_with_int8_matches_in_process(tmp_path: Path, parity_runs: dict[str, Path | BaseException]) -> None:
    """`compression.kind=int8` on Flower: the in-process adapter, and the compressed bytes as Flower's records carry them."""
    flower_dir = _result(parity_runs["firm int8"])
    config = tiny_config(tmp_path / "inprocess", "compression.kind=int8", "output.name=run")
    inproc = run(config)
    ours, theirs = _adapter(flower_dir), _adapter(inproc.run_dir)
    assert list(ours) == list(theirs)
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) < 1e-6
    from firm.policy import build_policy

    adapter = build_policy(config.model, config.lora, config.federation.seed).get_adapter()  # the names on the wire
    shapes = {name: tuple(t.shape) for name, t in adapter.items()}
    per_upload = payload_bytes(payload_to_record(compress(random_adapter(shapes, seed=7), INT8)))
    for row, inproc_row in zip(_rows(flower_dir), inproc.metrics, strict=True):
        assert row["dropped"] == {}
        assert row["comm"]["upload_bytes"] == per_upload * len(row["clients"])  # sizes depend on the shapes only
        assert row["eval"] == pytest.approx(inproc_row["eval"], abs=1e-6)


@pytest.fixture(scope="module")
def palette_run(
    cluster: local.Cluster, parity_runs: dict[str, Path | BaseException], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`PALETTE` on the shared cluster once the parity runs are done: warm workers, and nothing else running.

    Not with the parity runs: each statistics round is a message round trip that needs both nodes,
    and queued behind the parity runs' training messages a round can outlast `engine.round_timeout`. Not
    with the own-cluster runs either: their first round must finish within 180 s of their start.
    """
    del parity_runs  # only to come after them
    return submit(_flower_config(tmp_path_factory.mktemp("palette"), cluster, *PALETTE, "output.name=run"), quiet=True)


@pytest.mark.slow  # about 10 statistics rounds of ~5 s each on loopback; tests/test_flower_palette.py covers it in memory
def test_palette_on_flower_matches_in_process(tmp_path: Path, palette_run: Path) -> None:
    """`firm train engine=flower palette.targets=...`: the SuperNodes sample and answer the statistics rounds by
    Message; the server's solve gives the in-process lambda, and the nodes train with its preference."""
    flower_dir = palette_run
    inproc = run(tiny_config(tmp_path / "inprocess", *PALETTE, "palette.region=false", "output.name=run"))
    ours = json.loads((flower_dir / "palette.json").read_text())
    theirs = json.loads((inproc.run_dir / "palette.json").read_text())
    names = ["positiveness", "conciseness"]
    lam = np.array([ours["lambda"][n] for n in names])
    expected = np.array([theirs["lambda"][n] for n in names])
    assert expected.min() > 0  # both targets bind: a two-dimensional solve
    assert np.abs(lam - expected).max() <= 1e-9
    assert ours["stat_rounds"] == theirs["stat_rounds"] and ours["num_samples"] == theirs["num_samples"] == 2 * 6 * 4
    assert ours["clients"] == 2 and ours["engine"] == "flower"
    # counted from the messages' records: more than the 8 bytes per number the in-process count assumes
    assert ours["stat_upload_bytes"] > theirs["stat_upload_bytes"] > 0 and ours["stat_download_bytes"] > 0
    assert "region" not in ours and "not drawn on Flower" in ours["region_skipped"]
    # the nodes trained with the palette's preference: FedAvg's logged weights are exactly p = lambda / sum(lambda)
    summary = json.loads((flower_dir / "summary.json").read_text())
    np.testing.assert_allclose(summary["preference"], expected / expected.sum(), rtol=0, atol=1e-12)
    for row in _rows(flower_dir):
        assert sorted(row["weights"]) == ["0", "1"]
        for weights in row["weights"].values():
            np.testing.assert_allclose(weights, summary["preference"], rtol=0, atol=1e-12)
    ours_adapter, theirs_adapter = _adapter(flower_dir), _adapter(inproc.run_dir)
    assert max((ours_adapter[k] - theirs_adapter[k]).abs().max().item() for k in ours_adapter) < 1e-6


def _sites_losing_a_node(tmp_path: Path) -> tuple[Path, str, Path, BaseException | None]:
    """3 sites, 3 rounds, min_clients = 1: site 0 on its built-in shard, 1 on its own prompt file, 2 on a
    broken one; SIGKILL node 0 (SuperNode and worker) once round 1 is in metrics.jsonl.

    The run dir, site 1's worker log, the broken file, and the error `submit` raised (None: completed).
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    own = tmp_path / "site1.jsonl"
    own.write_text(
        "\n".join(json.dumps({"prompt": f"Tell me about the {w} in our shop."}) for w in ("lamps", "chairs", "desks")) + "\n"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": \n')
    outcome: dict[str, Any] = {}
    with local.local_cluster(
        tmp_path / "state", 3, superlink=f"127.0.0.1:{local.free_port()}", prompt_files=["", str(own), str(bad)]
    ) as c:
        sites = ["federation.num_clients=3", "federation.clients_per_round=3", "federation.min_clients=1"]
        config = _flower_config(tmp_path, c, "federation.rounds=3", "engine.round_timeout=15", "output.name=run", *sites)
        run_dir = Path(config.output.dir) / "run"

        def go() -> None:
            try:
                outcome["dir"] = submit(config, quiet=True)
            except BaseException as err:
                outcome["error"] = err

        thread = threading.Thread(target=go)
        thread.start()
        deadline = time.monotonic() + 180
        while not ((run_dir / "metrics.jsonl").exists() and _rows(run_dir)) and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (run_dir / "metrics.jsonl").exists() and _rows(run_dir), f"round 1 never finished: {outcome}"
        for p in c.processes:
            if p.role in ("supernode-0", "worker-0"):
                local.stop(p, grace=0.0)
        thread.join(timeout=300)
        assert not thread.is_alive()
        return run_dir, (c.state_dir / "worker-1.log").read_text(), bad, outcome.get("error")


@pytest.fixture(scope="module")
def sites_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path, BaseException | None]:
    """The run that needs a cluster of its own: sites with their own prompt files, one SIGKILLed after round 1.

    One run for both: each loopback cluster costs about a minute of CPU (seven processes importing
    flwr, torch and transformers) on this 2-core machine. The failing side of a lost node
    (`min_clients` not met) is `tests/test_flower_client.py`'s, in memory.
    """
    return _sites_losing_a_node(tmp_path_factory.mktemp("sites"))


def test_sites_read_their_own_prompt_files(sites_run: tuple[Path, str, Path, BaseException | None]) -> None:
    """Site 1 trains on its own file; site 2's file is broken: it is dropped with its file's error, the others go on."""
    run_dir, log, bad, _ = sites_run
    assert "client 1: 3 prompts" in log  # the site's file, not the built-in shard
    rows = _rows(run_dir)
    assert rows[0]["dropped"] == {"2": rows[0]["dropped"]["2"]}  # only the broken site, before the kill
    assert sorted(rows[0]["weights"]) == ["0", "1"]  # the site with its own file trained and was aggregated
    for row in rows:
        assert f"{bad}:2: invalid JSON" in row["dropped"]["2"]  # the site's error, with its line, reached the server


def test_killed_node_is_dropped_and_the_run_completes(sites_run: tuple[Path, str, Path, BaseException | None]) -> None:
    run_dir, _, _, error = sites_run
    assert error is None
    rows = _rows(run_dir)
    assert [r["round"] for r in rows] == [1, 2, 3]
    for row in rows[1:]:
        assert sorted(row["dropped"]) == ["0", "2"] and "no reply" in row["dropped"]["0"]
        assert list(row["weights"]) == ["1"]  # aggregated from the survivor only
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (run_dir / "final_adapter").is_dir()


def test_a_run_short_of_clients_fails_clearly(parity_runs: dict[str, Path | BaseException]) -> None:
    """Three clients asked of the shared two-node cluster: client 2 has no SuperNode, every sampled client is
    required (min_clients = 0), so round 1 fails; `submit` raises with the server's reason, and the run
    directory says failed with nothing trained."""
    error = parity_runs["short of clients"]
    assert isinstance(error, FlowerRunError), error
    assert "round 1 (train): " in str(error) and "federation.min_clients needs 3" in str(error)
    assert "client 2: no SuperNode holds this client id" in str(error)
    run_dir = parity_runs["short of clients dir"]
    assert isinstance(run_dir, Path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds_completed"] == 0
    assert not (run_dir / "final_adapter").exists()


def test_cluster_up_refuses_a_second_start_and_down_stops_only_its_processes(tmp_path: Path) -> None:
    port = local.free_port()
    c = local.up(tmp_path, 1, superlink=f"127.0.0.1:{port}")
    try:
        assert all(local._alive(p.pid) for p in c.processes)
        with pytest.raises(local.ClusterError, match="already has running processes"):
            local.up(tmp_path, 1, superlink=f"127.0.0.1:{port}")
    finally:
        stopped = local.down(tmp_path)
    assert {p.pid for p in stopped} == {p.pid for p in c.processes}
    assert not any(local._alive(p.pid) for p in c.processes)
    with pytest.raises(local.ClusterError, match="no local Flower cluster"):
        local.down(tmp_path)


@pytest.mark.slow
def test_smollm2_round_on_flower(tmp_path: Path) -> None:
    """The default model, scorers and data through Flower: one round, two SuperNodes, parity with in process."""
    with local.local_cluster(tmp_path / "state", 2, superlink=f"127.0.0.1:{local.free_port()}") as c:
        overrides = [
            "federation.num_clients=2",
            "federation.rounds=1",
            "algorithm.local_steps=1",
            "eval.num_prompts=4",
            "output.progress=false",
        ]
        flower_dir = submit(
            load_config(
                None,
                [
                    *overrides,
                    "engine=flower",
                    f'engine.superlink="{c.superlink}"',
                    f'output.dir="{tmp_path}"',
                    "output.name=flower",
                ],
            ),
            quiet=True,
        )
    inproc = run(load_config(None, [*overrides, f'output.dir="{tmp_path}"', "output.name=inprocess"]))
    ours, theirs = _adapter(flower_dir), _adapter(inproc.run_dir)
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-6
    assert _rows(flower_dir)[0]["eval"] == pytest.approx(_rows(inproc.run_dir)[0]["eval"], abs=1e-6)
