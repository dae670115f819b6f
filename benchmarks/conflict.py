"""Is the helpfulness / harmlessness conflict real? Correlation on the base model's own replies.

Samples G replies of the base model (adapter disabled: no training) to provocative prompts,
scores each with `helpfulness` and `harmlessness`, and prints the Pearson and Spearman
correlation of the two rewards:

- pooled over all replies, and
- within prompt (each reward minus its prompt's mean), which is what group-relative advantages
  see: a negative within-prompt correlation means the replies that help more harm more.

The same is printed for non-provocative (chatterbot) prompts as a contrast.

    python benchmarks/conflict.py [--model smollm2-135m] [--prompts 24] [--samples 4] [--tokens 48]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from scipy import stats

from firm.config import LoraConfig, ModelConfig
from firm.data import Prompt, load_prompts
from firm.objectives import resolve_objective, score
from firm.policy import Policy, build_policy
from firm.rollout import sample
from firm.seeding import Stream, numpy_rng, torch_generator


def replies_and_rewards(
    policy: Policy, prompts: list[Prompt], samples: int, tokens: int, seed: int
) -> tuple[np.ndarray, list[str]]:
    """[N * G, 2] rewards (helpfulness, harmlessness) of base-model replies, and the replies."""
    objectives = [(n, resolve_objective(n)) for n in ("helpfulness", "harmlessness")]
    rewards, texts = [], []
    generator = torch_generator(policy.device, Stream.BENCHMARK, seed, 0)
    for start in range(0, len(prompts), 4):
        chunk = prompts[start : start + 4]
        with policy.reference():
            rollout = sample(policy, [p.text for p in chunk], samples, tokens, 1.0, generator)
        r = score(objectives, [chunk[g].text for g in rollout.group], rollout.completions, device=policy.device,
                  group=rollout.group, reference=[chunk[g].reference for g in rollout.group])  # fmt: skip
        rewards.append(r.numpy())
        texts.extend(rollout.completions)
    return np.concatenate(rewards), texts


def correlations(rewards: np.ndarray, samples: int) -> dict[str, float]:
    within = rewards.reshape(-1, samples, 2)
    within = (within - within.mean(axis=1, keepdims=True)).reshape(-1, 2)
    return {
        "pearson": float(stats.pearsonr(rewards[:, 0], rewards[:, 1]).statistic),
        "pearson_p": float(stats.pearsonr(rewards[:, 0], rewards[:, 1]).pvalue),
        "spearman": float(stats.spearmanr(rewards[:, 0], rewards[:, 1]).statistic),
        "pearson_within_prompt": float(stats.pearsonr(within[:, 0], within[:, 1]).statistic),
        "spearman_within_prompt": float(stats.spearmanr(within[:, 0], within[:, 1]).statistic),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=24, help="prompts per set")
    parser.add_argument("--samples", type=int, default=4, help="replies per prompt")
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per reply")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    policy = build_policy(ModelConfig(name=args.model), LoraConfig(), seed=args.seed)
    rng = numpy_rng(Stream.BENCHMARK, args.seed, 1)
    sets = {"provocative": load_prompts("provocative"), "chatterbot": load_prompts("chatterbot")}
    print(f"model {args.model}, {args.prompts} prompts x {args.samples} replies per set, {args.tokens} new tokens\n")
    for name, pool in sets.items():
        chosen = [pool[int(i)] for i in rng.choice(len(pool), size=min(args.prompts, len(pool)), replace=False)]
        rewards, texts = replies_and_rewards(policy, chosen, args.samples, args.tokens, args.seed)
        corr = correlations(rewards, args.samples)
        print(f"{name} prompts: mean helpfulness {rewards[:, 0].mean():.3f}, mean harmlessness {rewards[:, 1].mean():.3f}")
        print(
            "  correlation helpfulness vs harmlessness: "
            + ", ".join((f"{k} {v:.3f}" if k.endswith("_p") else f"{k} {v:+.3f}") for k, v in corr.items())
        )
        if name == "provocative":
            order = np.argsort(rewards[:, 0])
            print(
                f"  most helpful reply  (help {rewards[order[-1], 0]:.2f}, harmless {rewards[order[-1], 1]:.2f}): {texts[order[-1]][:140]!r}"
            )
            print(
                f"  least helpful reply (help {rewards[order[0], 0]:.2f}, harmless {rewards[order[0], 1]:.2f}): {texts[order[0]][:140]!r}"
            )
        print()
    print(f"wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
