"""End to end on the tiny model: 2 clients x 2 rounds x 2 objectives, for every algorithm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import firm
from firm.codec import encode
from firm.train import RunResult
from tests.conftest import tiny_config

ALGORITHMS = ["firm", "fedavg", "mgda", "fmgda"]
METRIC_FIELDS = {"round", "clients", "eval", "kl", "train", "weights", "drift", "server", "comm", "time_s", "local"}
PAYLOADS_PER_CLIENT = {"fmgda": 2}  # one adapter delta per objective (M = 2); one for the others
TIME_PHASES = {"rollout", "scoring", "forward", "backward", "step", "aggregation", "communication", "eval", "round"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    out = tmp_path_factory.mktemp("runs")
    return {alg: firm.run(tiny_config(out, f"algorithm.name={alg}", f"output.name={alg}")) for alg in ALGORITHMS}


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_run_directory_and_metrics_fields(runs: dict[str, RunResult], alg: str) -> None:
    result = runs[alg]
    d = result.run_dir
    assert (d / "config.toml").is_file()
    assert firm.load_config(d / "config.toml").algorithm.name == alg  # the resolved config loads back
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row.keys() >= METRIC_FIELDS
        assert set(row["eval"]) == {"positiveness", "conciseness"}
        assert all(0.0 <= v <= 1.0 for v in row["eval"].values())
        assert row["kl"] >= 0.0
        assert set(row["drift"]) == {"weights", "updates"}
        assert set(row["comm"]) == {"upload_bytes", "download_bytes"}
        assert row["time_s"].keys() >= TIME_PHASES
        assert sorted(row["weights"]) == ["0", "1"] == sorted(row["local"])
        for weights in row["weights"].values():
            assert len(weights) == 2 and abs(sum(weights) - 1.0) < 1e-9 and min(weights) >= 0.0
        for steps in row["local"].values():
            assert len(steps) == 2 * PAYLOADS_PER_CLIENT.get(alg, 1)  # K = 2 local steps (per objective for fmgda)
            assert {"reward", "weights", "kl", "d_norm"} <= steps[0].keys()
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2
    assert summary["total_upload_bytes"] == sum(r["comm"]["upload_bytes"] for r in rows)
    for r in (1, 2):
        ckpt = d / "checkpoints" / f"round_{r:04d}"
        assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "state.json").is_file()
    assert (d / "final_adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_upload_bytes_equal_clients_times_encoded_adapter(runs: dict[str, RunResult], alg: str) -> None:
    result = runs[alg]
    adapter_bytes = len(encode(result.final_adapter))
    assert adapter_bytes == result.summary["adapter_bytes"]
    for row in result.metrics:
        assert row["comm"]["upload_bytes"] == len(row["clients"]) * PAYLOADS_PER_CLIENT.get(alg, 1) * adapter_bytes
        assert row["comm"]["download_bytes"] == len(row["clients"]) * adapter_bytes


def test_fmgda_uploads_exactly_m_times_firm(runs: dict[str, RunResult]) -> None:
    for firm_row, fmgda_row in zip(runs["firm"].metrics, runs["fmgda"].metrics, strict=True):
        assert fmgda_row["comm"]["upload_bytes"] == 2 * firm_row["comm"]["upload_bytes"]
        assert len(fmgda_row["server"]["weights"]) == 2 and firm_row["server"] == {}


def test_weights_follow_each_rule(runs: dict[str, RunResult]) -> None:
    for row in runs["fedavg"].metrics:
        assert all(w == pytest.approx([0.5, 0.5]) for w in row["weights"].values())
        assert row["drift"]["weights"] == pytest.approx(0.0, abs=1e-12)

    # FIRM's weights are pulled towards p = (0.5, 0.5); MGDA's are not: FIRM is never farther from p on average.
    def mean_dist(alg: str) -> float:
        ws = [w for row in runs[alg].metrics for w in row["weights"].values()]
        return sum(abs(w[0] - 0.5) for w in ws) / len(ws)

    assert mean_dist("firm") <= mean_dist("mgda") + 1e-9
    assert any(w != pytest.approx([0.5, 0.5]) for row in runs["mgda"].metrics for w in row["weights"].values())


def test_training_moves_the_adapter(runs: dict[str, RunResult]) -> None:
    for alg in ALGORITHMS:
        lora_b = [t for name, t in runs[alg].final_adapter.items() if "lora_B" in name]
        assert any(t.abs().max() > 0 for t in lora_b), f"{alg}: LoRA B is still zero"
        assert runs[alg].metrics[-1]["kl"] > 0.0


def test_same_seed_same_adapter_different_seed_different(runs: dict[str, RunResult], tmp_path: Path) -> None:
    again = firm.run(tiny_config(tmp_path, "algorithm.name=firm", "output.name=again"))
    for name, tensor in runs["firm"].final_adapter.items():
        assert torch.equal(tensor, again.final_adapter[name]), name
    assert again.metrics[-1]["eval"] == runs["firm"].metrics[-1]["eval"]
    other = firm.run(tiny_config(tmp_path, "algorithm.name=firm", "output.name=other", "federation.seed=1"))
    assert any(not torch.equal(t, other.final_adapter[n]) for n, t in runs["firm"].final_adapter.items())


def test_final_adapter_loads_with_peft(runs: dict[str, RunResult]) -> None:
    from peft import PeftModel

    from firm.policy import build_tiny_model, build_tiny_tokenizer

    base = build_tiny_model(seed=0, vocab_size=len(build_tiny_tokenizer()))
    model = PeftModel.from_pretrained(base, str(runs["firm"].run_dir / "final_adapter"))
    loaded = {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}
    assert loaded.keys() == runs["firm"].final_adapter.keys()
    for name, tensor in runs["firm"].final_adapter.items():
        assert torch.equal(loaded[name], tensor), name


def test_existing_run_directory_is_never_overwritten(runs: dict[str, RunResult]) -> None:
    from firm.rundir import RunDirError

    d = runs["firm"].run_dir
    before = (d / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="already exists"):
        firm.run(tiny_config(d.parent, "output.name=firm"))
    assert (d / "metrics.jsonl").read_text() == before


def test_vjp_modes_give_the_same_run(tmp_path: Path) -> None:
    a = firm.run(tiny_config(tmp_path, "output.name=batched", "algorithm.vjp=batched", "federation.rounds=1"))
    b = firm.run(tiny_config(tmp_path, "output.name=loop", "algorithm.vjp=loop", "federation.rounds=1"))
    for name, tensor in a.final_adapter.items():
        torch.testing.assert_close(tensor, b.final_adapter[name], rtol=1e-5, atol=1e-7)


def test_custom_objective_module_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, completions, **kwargs):\n    return [float(len(c)) / 100 for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = firm.run(tiny_config(tmp_path, 'objectives.names=["positiveness", "my_rewards:length"]', "federation.rounds=1"))
    assert set(result.metrics[0]["eval"]) == {"positiveness", "my_rewards:length"}


def test_objective_returning_wrong_count_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from firm.objectives import ObjectiveError

    (tmp_path / "bad_rewards.py").write_text("def short(prompts, completions, **kwargs):\n    return [0.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ObjectiveError, match="objective 'bad_rewards:short' returned 1 rewards for"):
        firm.run(tiny_config(tmp_path, 'objectives.names=["positiveness", "bad_rewards:short"]', "federation.rounds=1"))


def test_cli_train_subprocess(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        '[model]\nname = "tiny"\n[federation]\nnum_clients = 2\nclients_per_round = 1\nrounds = 1\n'
        "[rollout]\nprompts_per_step = 2\nsamples_per_prompt = 2\nmax_new_tokens = 6\n"
        f'[output]\ndir = "{tmp_path.as_posix()}"\nname = "cli"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "firm", "train", "--config", str(cfg), "algorithm.reg=0.5"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "run directory:" in proc.stdout and "report:" in proc.stdout
    assert "helpfulness" in proc.stdout and "bytes sent" in proc.stdout  # the default objectives, base vs final table
    assert (tmp_path / "cli" / "final_adapter" / "adapter_model.safetensors").is_file()
    assert firm.load_config(tmp_path / "cli" / "config.toml").algorithm.reg == 0.5
    # A second run into the same directory is a user error: one line, exit 2, nothing overwritten.
    again = subprocess.run(
        [sys.executable, "-m", "firm", "train", "--config", str(cfg)], capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_model_from_local_path(tmp_path: Path) -> None:
    """The AutoModelForCausalLM / AutoTokenizer path (hub id or local folder), here on a saved tiny model."""
    from firm.policy import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    folder = tmp_path / "tiny-model"
    build_tiny_model(seed=0, vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    result = firm.run(tiny_config(tmp_path, f'model.name="{folder.as_posix()}"', "federation.rounds=1"))
    assert result.summary["status"] == "completed"
    assert result.summary["model"] == folder.as_posix()
