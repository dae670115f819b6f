"""Compressed uploads (firm.compression): error bounds, bytes, error feedback, engines, resume, config."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from firm.codec import decode, encode
from firm.compression import (
    RESIDUAL,
    CompressedPayloadError,
    compress,
    decode_upload,
    decompress,
    dequantize_int8,
    encode_uploads,
    num_blocks,
    quantize_int8,
    topk_count,
)
from firm.config import CompressionConfig, ConfigError, config_to_toml, field_help
from firm.train import RunResult, run
from firm.validation import load_config
from tests.conftest import tiny_config

INT8 = CompressionConfig(kind="int8")
INT8_BLOCK = CompressionConfig(kind="int8", block=256)
TOPK = CompressionConfig(kind="topk", topk=0.1)


def smollm2_lora_shapes() -> dict[str, tuple[int, int]]:
    """SmolLM2-135M's LoRA (r = 8 on q_proj and v_proj of 30 layers, hidden 576, kv dim 192): 460,800 parameters."""
    shapes = {}
    for layer in range(30):
        for module, out_dim in (("q_proj", 576), ("v_proj", 192)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            shapes[f"{prefix}.lora_A.default.weight"] = (8, 576)
            shapes[f"{prefix}.lora_B.default.weight"] = (out_dim, 8)
    return shapes


def random_adapter(shapes: dict[str, tuple[int, ...]], seed: int, scale: float = 1e-3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: scale * torch.randn(shape, generator=g) for name, shape in shapes.items()}


def header_bytes(payload: bytes) -> int:
    """The safetensors header: its 8-byte length and the JSON (names, dtypes, shapes, offsets, metadata)."""
    return 8 + int.from_bytes(payload[:8], "little")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("block", [0, 256, 7])
def test_int8_error_is_at_most_half_a_scale_per_entry(block: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g) * torch.logspace(-4, 0, 1000)  # magnitudes spread over 4 decades
    q, scales = quantize_int8(x, block)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127  # every block's largest entry maps to +-127
    assert scales.shape == (num_blocks(1000, block),) == ((math.ceil(1000 / block),) if block else (1,))
    back = dequantize_int8(q, scales, block)
    per_entry_scale = scales.repeat_interleave(block if block else 1000)[:1000]
    assert bool(((x - back).abs() <= per_entry_scale / 2 * (1 + 1e-6)).all())
    if block == 256:  # a block's scale follows its own magnitude: the small-magnitude start is finer than per tensor
        _, tensor_scale = quantize_int8(x, 0)
        assert float(scales[0]) < float(tensor_scale[0]) / 10


def test_int8_zero_blocks_and_whole_adapter_round_trip() -> None:
    x = torch.cat([torch.zeros(256), torch.linspace(-1, 1, 300)])  # block 0 all zeros, a short last block
    q, scales = quantize_int8(x, 256)
    assert float(scales[0]) == 0.0 and bool((q[:256] == 0).all())
    assert torch.equal(dequantize_int8(q, scales, 256)[:256], torch.zeros(256))
    assert torch.equal(decompress(compress({"z": torch.zeros(4, 8)}, INT8))["z"], torch.zeros(4, 8))
    adapter = random_adapter({"a": (8, 128), "b": (128, 8), "c": (3,)}, seed=1)
    for config in (INT8, INT8_BLOCK):
        back = decompress(compress(adapter, config))
        assert list(back) == sorted(adapter)
        for name, t in adapter.items():
            bound = t.abs().max() / 127 / 2  # the per-tensor scale bounds every block's scale
            assert back[name].shape == t.shape and back[name].dtype == torch.float32
            assert float((back[name] - t).abs().max()) <= float(bound) * (1 + 1e-6)


def test_topk_keeps_exactly_the_k_largest() -> None:
    adapter = random_adapter({"a": (8, 128), "b": (128, 8), "c": (3,)}, seed=2)
    back = decompress(compress(adapter, TOPK))
    for name, t in adapter.items():
        k = topk_count(t.numel(), 0.1)
        assert k == min(t.numel(), max(1, math.ceil(0.1 * t.numel())))
        kept = back[name].reshape(-1) != 0
        largest = set(torch.argsort(t.abs().reshape(-1), descending=True)[:k].tolist())
        assert set(torch.nonzero(kept).reshape(-1).tolist()) == largest
        assert torch.equal(back[name].reshape(-1)[kept], t.reshape(-1)[kept])  # kept values travel exactly
    full = decompress(compress(adapter, CompressionConfig(kind="topk", topk=1.0)))
    assert all(torch.equal(full[n], t) for n, t in adapter.items())


def test_none_is_byte_identical_to_the_plain_codec() -> None:
    adapter = random_adapter({"a": (8, 128), "b": (128, 8)}, seed=3)
    payloads, residuals = encode_uploads([adapter], CompressionConfig(), {})
    assert payloads == [encode(adapter)] and residuals == {}
    assert encode(adapter) == safetensors.torch.save(adapter)  # the codec without metadata: the bytes of before
    back = decode_upload(payloads[0])
    assert all(torch.equal(back[n], t) for n, t in adapter.items())


def test_decoded_uploads_take_the_adapter_dtype() -> None:
    adapter = {"a": torch.randn(4, 8).to(torch.bfloat16)}
    payloads, residuals = encode_uploads([adapter], INT8, {})
    assert decode_upload(payloads[0], {"a": torch.bfloat16})["a"].dtype == torch.bfloat16
    sent = decode_upload(payloads[0], {"a": torch.bfloat16})["a"].float()
    assert torch.allclose(adapter["a"].float() - sent, residuals[f"{RESIDUAL}.0.a"])  # measured against what is aggregated


# --------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("where", ["tiny", "smollm2"])
def test_int8_is_a_quarter_of_float32_plus_a_small_header(where: str, tiny_policy: Any) -> None:
    if where == "tiny":
        shapes = {name: tuple(t.shape) for name, t in tiny_policy.get_adapter().items()}
    else:
        shapes = smollm2_lora_shapes()
        assert sum(math.prod(s) for s in shapes.values()) == 460_800
    adapter = random_adapter(shapes, seed=4)
    d, tensors = sum(t.numel() for t in adapter.values()), len(adapter)
    plain = encode(adapter)
    assert len(plain) - header_bytes(plain) == 4 * d
    per_tensor, per_block, topk = (compress(adapter, c) for c in (INT8, INT8_BLOCK, TOPK))
    # the data: one byte per value and a float32 scale per block; top-k: an int32 index and a float32 value per kept entry
    assert len(per_tensor) - header_bytes(per_tensor) == d + 4 * tensors
    assert len(per_block) - header_bytes(per_block) == d + 4 * sum(math.ceil(t.numel() / 256) for t in adapter.values())
    assert len(topk) - header_bytes(topk) == 8 * sum(topk_count(t.numel(), 0.1) for t in adapter.values())
    # the header (one line of JSON layout per tensor) is no bigger than the plain payload's own header
    assert header_bytes(per_tensor) <= header_bytes(plain)
    assert len(per_tensor) <= len(plain) / 4 + header_bytes(plain)
    assert len(per_tensor) / len(plain) < 0.25 + header_bytes(plain) / len(plain)
    assert len(topk) < len(plain) * 0.2 + header_bytes(plain)  # 8 f d bytes, f = 0.1


# --------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize("config", [INT8, INT8_BLOCK, TOPK], ids=["int8", "int8-block", "topk"])
def test_error_feedback_sends_the_sum_of_the_deltas(config: CompressionConfig) -> None:
    """sum_t sent_t + residual_T = sum_t delta_t: what compression drops is sent later, not lost."""
    shapes = {"a": (8, 64), "b": (64, 8)}
    state: dict[str, Any] = {"unrelated": 1}  # the algorithm's own state is left alone
    no_ef = CompressionConfig(kind=config.kind, block=config.block, topk=config.topk, error_feedback=False)
    total = {n: torch.zeros(s) for n, s in shapes.items()}
    sent = {n: torch.zeros(s) for n, s in shapes.items()}
    sent_no_ef = {n: torch.zeros(s) for n, s in shapes.items()}
    for round_idx in range(6):
        delta = random_adapter(shapes, seed=10 + round_idx)
        payloads, residuals = encode_uploads([delta], config, state)
        assert set(residuals) == {f"{RESIDUAL}.0.{n}" for n in shapes}  # one residual per tensor of the one payload
        state = {**state, **residuals}
        plain, none_kept = encode_uploads([delta], no_ef, state)
        assert none_kept == {}
        for n in shapes:
            total[n] += delta[n]
            sent[n] += decode_upload(payloads[0])[n]
            sent_no_ef[n] += decode_upload(plain[0])[n]
    for n in shapes:
        assert torch.allclose(sent[n] + state[f"{RESIDUAL}.0.{n}"], total[n], atol=1e-6, rtol=0)
    error = math.sqrt(sum(float((sent[n] - total[n]).pow(2).sum()) for n in shapes))
    error_no_ef = math.sqrt(sum(float((sent_no_ef[n] - total[n]).pow(2).sum()) for n in shapes))
    assert error < error_no_ef  # without feedback the dropped parts add up
    assert state["unrelated"] == 1


def test_each_fmgda_payload_has_its_own_residual() -> None:
    uploads = [random_adapter({"a": (4, 8)}, seed=s) for s in (20, 21)]
    payloads, residuals = encode_uploads(uploads, TOPK, {})
    assert len(payloads) == 2 and set(residuals) == {f"{RESIDUAL}.0.a", f"{RESIDUAL}.1.a"}
    for i, payload in enumerate(payloads):
        assert torch.allclose(decode_upload(payload)["a"] + residuals[f"{RESIDUAL}.{i}.a"], uploads[i]["a"])


def test_non_finite_deltas_reach_the_screen_as_nan_and_do_not_poison_the_residual() -> None:
    delta = {"a": torch.ones(4, 8), "b": torch.ones(3)}
    delta["a"][1, 2] = math.nan
    for config in (INT8, INT8_BLOCK, TOPK):
        payloads, residuals = encode_uploads([delta], config, {})
        back = decode_upload(payloads[0])
        assert not bool(torch.isfinite(back["a"]).all())  # firm.robust's screen rejects it
        assert all(bool(torch.isfinite(r).all()) for r in residuals.values())


def test_corrupt_payloads_raise_value_errors() -> None:
    payload = compress(random_adapter({"a": (4, 8)}, seed=5), TOPK)
    for bad in (payload[:5], payload[: len(payload) - 3], b"\x00" * 16):
        with pytest.raises(ValueError):
            decode_upload(bad)
    meta = {"firm.compression": json.dumps({"kind": "topk", "block": 0, "tensors": [{"name": "a", "shape": [4], "k": 1}]})}
    wrong_index = encode({"indices": torch.tensor([9], dtype=torch.int32), "values": torch.ones(1)}, meta)
    with pytest.raises(CompressedPayloadError, match="index outside"):
        decode_upload(wrong_index)
    short = encode({"indices": torch.zeros(0, dtype=torch.int32), "values": torch.zeros(0)}, meta)
    with pytest.raises(CompressedPayloadError, match="shorter"):
        decode_upload(short)
    assert set(decode(payload)) == {"indices", "values"}  # a plain decoder sees the two flat tensors


# --------------------------------------------------------------------------- config


def test_compression_config_values_are_checked_and_shown(tmp_path: Path) -> None:
    config = load_config(None, ["compression.kind=int8", "compression.block=256", "compression.error_feedback=false"])
    assert config.compression == CompressionConfig(kind="int8", block=256, topk=0.1, error_feedback=False)
    assert "[compression]" in config_to_toml(config) and 'kind = "int8"' in config_to_toml(config)
    helped = {key: doc for key, _, _, doc in field_help()}
    assert {"compression.kind", "compression.block", "compression.topk", "compression.error_feedback"} <= set(helped)
    assert all(helped[k] for k in helped if k.startswith("compression."))
    bad = {
        "compression.kind=int4": r"compression\.kind: got 'int4', allowed: one of 'none', 'int8', 'topk'",
        "compression.block=-1": r"compression\.block: must be >= 0",
        "compression.block=2.5": r"compression\.block: expected an integer",
        "compression.topk=0": r"compression\.topk: must be a fraction in \(0, 1\]",
        "compression.topk=1.5": r"compression\.topk: must be a fraction in \(0, 1\]",
        'compression.error_feedback="yes"': r"compression\.error_feedback: expected true or false",
        "compression.bits=4": r"unknown key 'compression\.bits'",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    """The same 2-round tiny run uncompressed and with int8 per-tensor compression and error feedback."""
    root = tmp_path_factory.mktemp("runs")
    return {
        kind: run(tiny_config(root, f"compression.kind={kind}", f"output.name={kind}"), reuse_model=True)
        for kind in ("none", "int8")
    }


def _final_adapter(result: RunResult) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(result.run_dir / "final_adapter" / "adapter_model.safetensors"))


def test_int8_run_uploads_fewer_bytes_and_the_same_downloads(runs: dict[str, RunResult], tiny_policy: Any) -> None:
    shapes = {name: tuple(t.shape) for name, t in tiny_policy.get_adapter().items()}
    plain = len(encode(random_adapter(shapes, seed=6)))  # payload sizes depend on the shapes only
    compressed = len(compress(random_adapter(shapes, seed=6), INT8))
    for none_row, int8_row in zip(runs["none"].metrics, runs["int8"].metrics, strict=True):
        clients = len(none_row["clients"])
        assert none_row["comm"]["upload_bytes"] == clients * plain  # none: today's safetensors bytes
        assert int8_row["comm"]["upload_bytes"] == clients * compressed  # int8: the compressed payload, as sent
        assert int8_row["comm"]["download_bytes"] == none_row["comm"]["download_bytes"]  # downloads stay float
        assert int8_row["dropped"] == {}
    assert runs["int8"].summary["total_upload_bytes"] < runs["none"].summary["total_upload_bytes"] / 3
    trained = runs["int8"].final_adapter
    assert any(bool((t != 0).any()) for n, t in trained.items() if "lora_B" in n)  # it trained on decoded deltas


def test_the_residual_is_client_state_checkpointed_and_resumed(runs: dict[str, RunResult], tmp_path: Path) -> None:
    full = runs["int8"]
    state = json.loads((full.run_dir / "checkpoints" / "round_0001" / "state.json").read_text())
    names = [n for n in full.final_adapter]
    for client_state in state["client_states"].values():
        assert set(client_state) == {f"{RESIDUAL}.0.{n}" for n in names}  # one residual per tensor, nothing uploaded
    tensors = safetensors.torch.load_file(str(full.run_dir / "checkpoints" / "round_0001" / "state.safetensors"))
    assert any(bool((t != 0).any()) for t in tensors.values())  # round 1 left something to send in round 2

    def cut_after_round_one(name: str) -> Path:  # as if the run had died after round 1's checkpoint
        part = tmp_path / name
        shutil.copytree(full.run_dir, part)
        for d in ("final_adapter", "checkpoints/round_0002"):
            shutil.rmtree(part / d)
        (part / "summary.json").unlink()
        return part

    resumed = run(load_config(full.run_dir / "config.toml"), resume_from=cut_after_round_one("resumed"), reuse_model=True)
    assert resumed.summary["resumed_from_round"] == 1
    for name, t in full.final_adapter.items():
        assert torch.equal(t, resumed.final_adapter[name])
    # the same resume with the residuals taken out of the checkpoint ends elsewhere: the residual mattered
    lost = cut_after_round_one("lost")
    state_file = lost / "checkpoints" / "round_0001" / "state.json"
    state["client_states"] = {c: {} for c in state["client_states"]}
    state_file.write_text(json.dumps(state))
    forgot = run(load_config(full.run_dir / "config.toml"), resume_from=lost, reuse_model=True)
    assert any(not torch.equal(t, forgot.final_adapter[n]) for n, t in full.final_adapter.items())


def test_fmgda_compresses_each_of_its_m_payloads_with_its_own_residual(tmp_path: Path, tiny_policy: Any) -> None:
    config = tiny_config(
        tmp_path,
        "algorithm=fmgda",
        "compression.kind=int8",
        "federation.rounds=1",
        "rollout.max_new_tokens=6",  # M separate local runs per client: keep them short
        "eval.num_prompts=2",
        "output.name=fmgda",
    )
    result = run(config, reuse_model=True)
    shapes = {name: tuple(t.shape) for name, t in tiny_policy.get_adapter().items()}
    row, m = result.metrics[0], config.num_objectives
    assert row["dropped"] == {}
    assert row["comm"]["upload_bytes"] == len(row["clients"]) * m * len(compress(random_adapter(shapes, seed=8), INT8))
    state = json.loads((result.run_dir / "checkpoints" / "round_0001" / "state.json").read_text())
    for client_state in state["client_states"].values():
        assert set(client_state) == {f"{RESIDUAL}.{i}.{n}" for i in range(m) for n in shapes}
