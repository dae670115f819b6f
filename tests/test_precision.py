"""model.compute_dtype: the choice (auto / explicit / refused), the bfloat16 policy's layout, and
bfloat16 vs float32 agreement on the tiny model (the SmolLM2 version is in tests/test_smollm2.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import torch

import firm.precision
from firm.config import ConfigError, ModelConfig, read_config
from firm.policy import PolicyError, build_policy
from firm.precision import PrecisionError, choose_compute_dtype
from firm.rollout import sample
from firm.train import run
from firm.validation import load_config
from tests.conftest import tiny_config, tiny_overrides

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def _capabilities(monkeypatch: pytest.MonkeyPatch, **flags: bool) -> None:
    caps = MappingProxyType({"architecture": "x86_64", "avx2": True, **flags})
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)


def _benchmark() -> Any:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "precision.py"
    spec = importlib.util.spec_from_file_location("benchmark_precision", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_auto_on_a_cpu_without_native_bf16_stays_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    _capabilities(monkeypatch)
    choice = choose_compute_dtype("auto", CPU)
    assert choice.dtype == torch.float32
    assert "no AVX512-BF16" in choice.reason


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16", "bf16", "sve_bf16"])
def test_auto_picks_bf16_on_a_cpu_that_reports_it(monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    _capabilities(monkeypatch, **{flag: True})
    choice = choose_compute_dtype("auto", CPU)
    assert choice.dtype == torch.bfloat16
    assert flag in choice.reason
    assert choice.as_dict() == {"dtype": "bfloat16", "reason": choice.reason}


def test_auto_follows_this_machines_own_cpu_flags() -> None:
    """No monkeypatch: what `auto` says here matches the CPU's reported features."""
    native = firm.precision.cpu_bf16_features()
    assert choose_compute_dtype("auto", CPU).dtype == (torch.bfloat16 if native else torch.float32)


def test_explicit_bf16_is_honoured_on_any_cpu_and_warns_when_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    _capabilities(monkeypatch)
    with pytest.warns(RuntimeWarning, match="emulated"):
        choice = choose_compute_dtype("bfloat16", CPU)
    assert choice.dtype == torch.bfloat16 and "emulated" in choice.reason
    _capabilities(monkeypatch, avx512_bf16=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_compute_dtype("bfloat16", CPU).dtype == torch.bfloat16
    assert choose_compute_dtype("float32", CPU).dtype == torch.float32


def test_cuda_choice_reads_the_gpus_own_bf16_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    support = {True: True, False: True}  # native -> answer
    monkeypatch.setattr(firm.precision, "_cuda_bf16", lambda device, native: support[native])
    assert choose_compute_dtype("auto", CUDA).dtype == torch.bfloat16
    support[True] = False  # pre-Ampere: emulated only
    assert choose_compute_dtype("auto", CUDA).dtype == torch.float32
    assert "emulated" in choose_compute_dtype("bfloat16", CUDA).reason
    support[False] = False  # cannot at all
    with pytest.raises(PrecisionError, match="Test GPU cannot run bfloat16; use auto or float32"):
        choose_compute_dtype("bfloat16", CUDA)
    assert choose_compute_dtype("auto", CUDA).dtype == torch.float32


def test_a_device_that_cannot_run_bf16_is_refused_by_config_validation_and_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(spec: str, device: torch.device) -> Any:
        if spec == "bfloat16":
            raise PrecisionError("model.compute_dtype = bfloat16: this device cannot run bfloat16; use auto or float32")
        return firm.precision.DtypeChoice(torch.float32, "test")

    monkeypatch.setattr(firm.policy, "choose_compute_dtype", refuse)
    with pytest.raises(ConfigError, match=r"^model\.compute_dtype = bfloat16: this device cannot run bfloat16"):
        load_config(None, ["model.name=tiny", "model.compute_dtype=bfloat16"])
    with pytest.raises(PolicyError, match="cannot run bfloat16"):
        build_policy(ModelConfig(name="tiny", compute_dtype="bfloat16"), read_config().lora, seed=0)


def test_unknown_dtype_and_the_old_key_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.compute_dtype"):
        load_config(None, ["model.compute_dtype=float16"])
    with pytest.raises(ConfigError, match=r"model\.dtype was renamed model\.compute_dtype"):
        load_config(None, ["model.dtype=float32"])
    # A run directory written before the rename still resumes: its own config.toml is upgraded.
    old = tmp_path / "config.toml"
    old.write_text('[model]\nname = "tiny"\ndtype = "float32"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="renamed"):
        load_config(old)
    assert load_config(old, upgrade=True).model.compute_dtype == "float32"


def test_bf16_policy_keeps_a_float32_adapter_with_the_float32_layout() -> None:
    lora = read_config().lora
    f32 = build_policy(ModelConfig(name="tiny", compute_dtype="float32"), lora, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        bf16 = build_policy(ModelConfig(name="tiny", compute_dtype="bfloat16"), lora, seed=0)
    assert bf16.precision.dtype == torch.bfloat16 and f32.precision.dtype == torch.float32
    frozen = [p for p in bf16.model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    a32, a16 = f32.get_adapter(), bf16.get_adapter()
    assert list(a32) == list(a16)  # a bf16 site and a float32 site federate the same adapter
    assert all(a16[n].dtype == torch.float32 and a16[n].shape == a32[n].shape for n in a32)
    # the same seeded LoRA init, which peft rounded to the base's dtype before it was made float32 again
    assert all(torch.equal(a16[n], a32[n].to(torch.bfloat16).float()) for n in a32)
    # the bf16 base is the float32 base rounded, nothing else
    w32 = dict(f32.model.named_parameters())
    for name, p in bf16.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, w32[name].to(torch.bfloat16)), name


def test_bf16_rollouts_carry_the_samplers_log_probs_for_the_importance_ratio(tiny_policy: Any) -> None:
    lora = read_config().lora
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        bf16 = build_policy(ModelConfig(name="tiny", compute_dtype="bfloat16"), lora, seed=0)
    args = (["hello there", "how are you"], 2, 6, 1.0)
    assert sample(tiny_policy, *args, torch.Generator().manual_seed(0)).behaviour_logprobs is None
    for sampler in ("fast", "plain"):
        ro = sample(bf16, *args, torch.Generator().manual_seed(0), sampler=sampler)
        assert ro.behaviour_logprobs is not None and ro.behaviour_logprobs.dtype == torch.float32
        assert torch.all(ro.behaviour_logprobs[ro.completion_mask.bool()] <= 0)
    ro8 = sample(bf16, *args, torch.Generator().manual_seed(0), precision="int8")  # the int8 copy is built from float32
    assert ro8.behaviour_logprobs is not None


def test_bf16_agrees_with_float32_within_the_stated_tolerances_on_the_tiny_model(tmp_path: Path) -> None:
    bench = _benchmark()
    config = tiny_config(tmp_path, "rollout.max_new_tokens=10")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        agreement = bench.measure(config, batches=2)
    assert all(agreement.within().values()), agreement
    assert min(agreement.grad_cosines) < 1.0 or agreement.logprob_max_abs > 0  # bf16 did round something


def test_the_agreement_check_fails_when_the_copies_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a bfloat16 copy with another adapter is far outside the tolerances."""
    bench = _benchmark()
    pair = bench.policy_pair

    def mismatched(config: Any, perturb: float = 0.02) -> Any:
        f32, bf16 = pair(config, perturb)
        with torch.no_grad():
            for p in bf16.params.values():
                p.add_(0.5 * torch.randn_like(p))
        return f32, bf16

    monkeypatch.setattr(bench, "policy_pair", mismatched)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        agreement = bench.measure(tiny_config(tmp_path, "rollout.max_new_tokens=10"), batches=1)
    assert not all(agreement.within().values())


def test_a_bf16_run_completes_and_says_its_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(None, [*tiny_overrides(tmp_path), "federation.rounds=1", "model.compute_dtype=bfloat16"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run(config)
    summary = json.loads((result.run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "completed"
    assert summary["compute_dtype"]["dtype"] == "bfloat16"
    err = capsys.readouterr().err
    assert err.count("firm: compute dtype bfloat16") == 1
    # tiny_overrides pins float32 for the pinned figures; auto is asked for here explicitly
    default = run(load_config(None, [*tiny_overrides(tmp_path), "federation.rounds=1", "model.compute_dtype=auto"]))
    expected = "bfloat16" if firm.precision.cpu_bf16_features() else "float32"
    assert default.summary["compute_dtype"]["dtype"] == expected


def test_bf16_fast_and_plain_log_probs_agree_with_a_float32_head() -> None:
    """Both log-prob paths (and the evaluation's logits) run the head in float32 on a bfloat16 base."""
    from firm.logprobs import completion_logits, token_logprobs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        bf16 = build_policy(ModelConfig(name="tiny", compute_dtype="bfloat16"), read_config().lora, seed=0)
    ro = sample(bf16, ["hello there", "how are you"], 2, 8, 1.0, torch.Generator().manual_seed(0))
    mask = ro.completion_mask.bool()
    fast, plain = token_logprobs(bf16, ro, 1.0, "fast"), token_logprobs(bf16, ro, 1.0, "plain")
    assert fast.dtype == plain.dtype == completion_logits(bf16, ro, 1.0).dtype == torch.float32
    assert (fast - plain).abs()[mask].max() < 1e-4
