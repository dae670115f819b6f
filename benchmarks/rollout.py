"""Benchmark: rollout tokens/s of FIRM's sampler vs Hugging Face `generate`, and the CPU roofline.

Measured in one run, side by side, repetitions interleaved (HF, plain, fast, fast int8, HF, ...):
- `hf generate`: `model.generate(do_sample=True, top_k=0, top_p=1, temperature)` on the same
  policy (base + LoRA adapter, peft unmerged), G samples per prompt via `num_return_sequences`;
- `firm plain`: `firm.rollout.sample(sampler="plain")`, the reference decoder;
- `firm fast`: `sampler="fast"` (LoRA merged for the rollout, preallocated KV cache and mask);
- `firm fast int8`: `sampler="fast", precision="int8"` (int8 weights for sampling only).
Tokens/s = decoded positions (sequences x steps actually run, prefill time included) / seconds.
Batch 16 = 4 prompts x 4 samples (the local step's shape) and 16 prompts x 1; batch 4 = 1 x 4 and 4 x 1.

Roofline probes on the same machine in the same run: fp32 and bf16 matmul GFLOP/s (2048^3, both
printed; bf16 when it is among `--dtypes`) and matrix-vector bandwidth (an 8192 x 8192 fp32
matrix, 268 MB, past every cache). A decode step at batch b reads every weight once and does
2 x params x b FLOPs, so
    bound(b) = b / max(weight_bytes / bandwidth, 2 params b / matmul_flops)    tokens/s
and each sampler's share of it is printed. (int8 reads a quarter of the bytes; its share is still
given against the bound of the table it sits in, so it can exceed what that dtype can reach.)
Where bfloat16 is emulated, the square bf16 probe can run slower than the decode's own small
matmuls (different kernels), so a bf16 share above 100 % says the probe, not the sampler, is the
limit there; on native-bf16 hardware the probe is the fast path and the bound is meaningful.
(Emulated, the bf16 probe is one ~1 minute run at 2048^3: `matmul_gflops` skips the repeats.)

Compute dtypes (`--dtypes`, default `float32,bfloat16`, or either alone): one policy per
`model.compute_dtype` (the bfloat16 one holds the float32 one's perturbed adapter), and one table
per dtype, all samplers of all dtypes interleaved in the same repetitions. In each table `hf
generate` runs on that dtype's own model (bfloat16 base, float32 LoRA, peft unmerged), so
`fast / hf` compares the two decoders at the same dtype. The float32 table is printed as before;
the bfloat16 one takes its memory bound from bf16 bytes (2 per parameter, half of fp32's) and its
compute bound from the bf16 matmul probe, and adds per batch shape `firm fast bf16 / firm fast
fp32` (the bf16 speed-up of the rollout). `firm fast int8` does not depend on the compute dtype
(its int8 copy is built from a float32 copy of the policy), so it runs once, with the float32
policy when there is one, in the first table, and the bfloat16 table prints `int8 / firm fast bf16`
(does int8 still pay on top of bf16?). The first lines name the CPU's native-bfloat16 features
(`firm.precision.cpu_bf16_features()`, or `none (emulated)`): without them bfloat16 runs emulated,
several times slower than float32, and the figures say so as measured.

    python benchmarks/rollout.py [--model smollm2-135m] [--tokens 32] [--reps 3] [--no-int8] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from bench_dtypes import BYTES, DTYPES, SHORT, build_policies, parse_dtypes

from firm.data import load_prompts
from firm.policy import Policy
from firm.precision import cpu_bf16_features
from firm.rollout import sample
from firm.validation import load_config


def matmul_gflops(size: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32, budget: float = 2.0) -> float:
    """Best matmul throughput in `dtype` over `reps` runs of [size, size] @ [size, size].

    A warm-up run slower than `budget` seconds (emulated bfloat16: ~20 s at 2048 on an AVX2 CPU) is
    steady state already and is the measurement, so the probe costs one run there, not six.
    """
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    first = _timed(lambda: a @ b)
    best = first if first > budget else min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * size**3 / best / 1e9


def matvec_gbs(size: int = 8192, reps: int = 5) -> float:
    """Best fp32 matrix-vector bandwidth (matrix bytes / time) over `reps` runs."""
    w, x = torch.randn(size, size), torch.randn(size)
    w @ x
    best = min(_timed(lambda: w @ x) for _ in range(reps))
    return size * size * 4 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hf_generate(policy: Policy, prompts: list[str], group: int, tokens: int, temperature: float, seed: int) -> int:
    """Hugging Face `generate` on the policy; returns the decoded positions (sequences x steps)."""
    tok = policy.tokenizer
    texts = [policy.format_prompt(p) for p in prompts]
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=not getattr(tok, "chat_template", None))
    enc = {k: v.to(policy.device) for k, v in enc.items()}
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = policy.model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=tokens,
            num_return_sequences=group,
            pad_token_id=tok.pad_token_id,
        )
    return int(out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1]))


def firm_sample(policy: Policy, prompts: list[str], group: int, tokens: int, temperature: float, seed: int, **kw: str) -> int:
    """FIRM's sampler; returns the decoded positions (sequences x steps)."""
    rollout = sample(policy, prompts, group, tokens, temperature, torch.Generator(policy.device).manual_seed(seed), **kw)  # type: ignore[arg-type]
    return int(rollout.completion_mask.numel())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=32, help="max new tokens")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 sampler")
    parser.add_argument(
        "--dtypes", type=parse_dtypes, default=list(DTYPES), help="compute dtypes, comma-separated (default float32,bfloat16)"
    )
    args = parser.parse_args()
    dtypes: list[str] = args.dtypes

    features = cpu_bf16_features()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"CPU: {torch.cpu.get_capabilities().get('cpu_name', '?')}, native bfloat16: {', '.join(features) or 'none (emulated)'}"
    )
    flops = {"float32": matmul_gflops()}
    if "bfloat16" in dtypes:  # not probed otherwise: emulated, it costs a minute
        flops["bfloat16"] = matmul_gflops(dtype=torch.bfloat16)
    gbs = matvec_gbs()
    bf16_probe = f"bf16 matmul {flops['bfloat16']:.1f} GFLOP/s, " if "bfloat16" in flops else ""
    print(f"roofline probes: fp32 matmul {flops['float32']:.0f} GFLOP/s, {bf16_probe}matrix-vector {gbs:.1f} GB/s")
    config = load_config(None, [f"model.name={args.model}"])
    policies = build_policies(config, dtypes)
    first = next(iter(policies.values()))
    num_params = sum(p.numel() for p in first.model.get_base_model().parameters())
    sizes = ", ".join(f"{BYTES[d] * num_params / 1e6:.0f} MB {SHORT[d]}" for d in dtypes)
    print(f"model {args.model}: {num_params / 1e6:.1f} M parameters ({sizes}), {args.tokens} new tokens\n")
    texts = [p.text for p in load_prompts("builtin")]
    # (dtype, name) -> sampler(prompts, group, tokens, temperature, seed) on that dtype's policy.
    samplers: dict[tuple[str, str], Callable[..., int]] = {}
    for dtype, policy in policies.items():
        samplers[(dtype, "hf generate")] = partial(hf_generate, policy)
        samplers[(dtype, "firm plain")] = partial(firm_sample, policy, sampler="plain")
        samplers[(dtype, "firm fast")] = partial(firm_sample, policy, sampler="fast")
    int8_host = dtypes[0]  # the int8 copy is float32 whatever the compute dtype: run once, in the first table
    if not args.no_int8 and first.device.type == "cpu":
        samplers[(int8_host, "firm fast int8")] = partial(firm_sample, first, sampler="fast", precision="int8")
    shapes = [(1, 4), (4, 1), (4, 4), (16, 1)]
    for prompts, group in shapes:  # warm-up: one untimed call of each (int8 also builds its copy here)
        for fn in samplers.values():
            fn(texts[:prompts], group, 4, 1.0, 0)
    rates: dict[tuple[int, int], dict[tuple[str, str], list[float]]] = {s: {k: [] for k in samplers} for s in shapes}
    for rep in range(args.reps):
        for prompts, group in shapes:
            for key, fn in samplers.items():
                start = time.perf_counter()
                positions = fn(texts[rep * 16 % len(texts) :][:prompts], group, args.tokens, 1.0, rep)
                rates[(prompts, group)][key].append(positions / (time.perf_counter() - start))

    int8_key = (int8_host, "firm fast int8")
    for dtype in dtypes:
        names = [name for d, name in samplers if d == dtype]
        short = SHORT[dtype]
        weight_bytes = BYTES[dtype] * num_params
        print(
            f"{dtype}: bound from {BYTES[dtype]}-byte weights ({weight_bytes / 1e6:.0f} MB) and the {short} matmul probe; "
            f"hf generate on the {short} model"
        )
        print(f"{'batch':>5} {'prompts x G':>11}  " + "  ".join(f"{k:>15}" for k in names) + "   fast / hf   bound   fast share")
        for (prompts, group), by_sampler in rates.items():
            batch = prompts * group
            med = {k: statistics.median(v) for k, v in by_sampler.items()}
            mine = {name: med[(dtype, name)] for name in names}
            bound = batch / max(weight_bytes / (gbs * 1e9), 2 * num_params * batch / (flops[dtype] * 1e9))
            cells = "  ".join(f"{mine[k]:11.1f} t/s" for k in names)
            print(
                f"{batch:>5} {f'{prompts} x {group}':>11}  {cells}   {mine['firm fast'] / mine['hf generate']:8.2f}x"
                f"  {bound:6.0f}   {100 * mine['firm fast'] / bound:5.1f} %"
            )
            for k in names:
                if k not in ("hf generate", "firm fast"):
                    print(
                        f"{'':>19}{k} / hf generate: {mine[k] / mine['hf generate']:.2f}x "
                        f"({100 * mine[k] / bound:.1f} % of the {short} bound)"
                    )
            if dtype == "bfloat16" and "float32" in dtypes:
                print(f"{'':>19}firm fast bf16 / firm fast fp32: {mine['firm fast'] / med[('float32', 'firm fast')]:.2f}x")
            if dtype == "bfloat16" and int8_key in med:
                print(f"{'':>19}int8 / firm fast bf16: {med[int8_key] / mine['firm fast']:.2f}x")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
