"""Benchmark: rollout tokens/s of FIRM's sampler vs Hugging Face `generate`, and the CPU roofline.

Measured in one run, side by side, repetitions interleaved (HF, plain, fast, fast int8, HF, ...):
- `hf generate`: `model.generate(do_sample=True, top_k=0, top_p=1, temperature)` on the same
  policy (base + LoRA adapter, peft unmerged), G samples per prompt via `num_return_sequences`;
- `firm plain`: `firm.rollout.sample(sampler="plain")`, the reference decoder;
- `firm fast`: `sampler="fast"` (LoRA merged for the rollout, preallocated KV cache and mask);
- `firm fast int8`: `sampler="fast", precision="int8"` (int8 weights for sampling only).
Tokens/s = decoded positions (sequences x steps actually run, prefill time included) / seconds.
Batch 16 = 4 prompts x 4 samples (the local step's shape) and 16 prompts x 1; batch 4 = 1 x 4 and 4 x 1.

Roofline probes on the same machine in the same run: fp32 matmul GFLOP/s (2048^3) and
matrix-vector bandwidth (an 8192 x 8192 fp32 matrix, 268 MB, past every cache). A decode step at
batch b reads every weight once and does 2 x params x b FLOPs, so
    bound(b) = b / max(weight_bytes / bandwidth, 2 params b / matmul_flops)    tokens/s
and each sampler's share of it is printed. (int8 reads a quarter of the bytes; its share is still
given against the fp32 bound, so it can exceed what fp32 can reach.)

    python benchmarks/rollout.py [--model smollm2-135m] [--tokens 32] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from firm.data import load_prompts
from firm.policy import Policy, build_policy
from firm.rollout import sample
from firm.validation import load_config


def matmul_gflops(size: int = 2048, reps: int = 5) -> float:
    """Best fp32 matmul throughput over `reps` runs of [size, size] @ [size, size]."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
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
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    gflops, gbs = matmul_gflops(), matvec_gbs()
    print(f"roofline probes: fp32 matmul {gflops:.0f} GFLOP/s, matrix-vector {gbs:.1f} GB/s")
    config = load_config(None, [f"model.name={args.model}"])
    policy = build_policy(config.model, config.lora, seed=0)
    with torch.no_grad():  # a non-trivial adapter, as after some training (B = 0 at init)
        gen = torch.Generator().manual_seed(0)
        for p in policy.params.values():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    num_params = sum(p.numel() for p in policy.model.get_base_model().parameters())
    weight_bytes = 4 * num_params
    print(
        f"model {args.model}: {num_params / 1e6:.1f} M parameters ({weight_bytes / 1e6:.0f} MB fp32), {args.tokens} new tokens\n"
    )
    texts = [p.text for p in load_prompts("builtin")]
    samplers: dict[str, Callable[..., int]] = {
        "hf generate": hf_generate,
        "firm plain": lambda *a: firm_sample(*a, sampler="plain"),
        "firm fast": lambda *a: firm_sample(*a, sampler="fast"),
    }
    if not args.no_int8 and policy.device.type == "cpu":
        samplers["firm fast int8"] = lambda *a: firm_sample(*a, sampler="fast", precision="int8")
    shapes = [(1, 4), (4, 1), (4, 4), (16, 1)]
    for prompts, group in shapes:  # warm-up: one untimed call of each (int8 also builds its copy here)
        for fn in samplers.values():
            fn(policy, texts[:prompts], group, 4, 1.0, 0)
    rates: dict[tuple[int, int], dict[str, list[float]]] = {s: {k: [] for k in samplers} for s in shapes}
    for rep in range(args.reps):
        for prompts, group in shapes:
            for name, fn in samplers.items():
                start = time.perf_counter()
                positions = fn(policy, texts[rep * 16 % len(texts) :][:prompts], group, args.tokens, 1.0, rep)
                rates[(prompts, group)][name].append(positions / (time.perf_counter() - start))

    print(f"{'batch':>5} {'prompts x G':>11}  " + "  ".join(f"{k:>15}" for k in samplers) + "   fast / hf   bound   fast share")
    for (prompts, group), by_sampler in rates.items():
        batch = prompts * group
        med = {k: statistics.median(v) for k, v in by_sampler.items()}
        bound = batch / max(weight_bytes / (gbs * 1e9), 2 * num_params * batch / (gflops * 1e9))
        cells = "  ".join(f"{med[k]:11.1f} t/s" for k in samplers)
        print(
            f"{batch:>5} {f'{prompts} x {group}':>11}  {cells}   {med['firm fast'] / med['hf generate']:8.2f}x"
            f"  {bound:6.0f}   {100 * med['firm fast'] / bound:5.1f} %"
        )
        for k in samplers:
            if k not in ("hf generate", "firm fast"):
                print(
                    f"{'':>19}{k} / hf generate: {med[k] / med['hf generate']:.2f}x ({100 * med[k] / bound:.1f} % of the fp32 bound)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
