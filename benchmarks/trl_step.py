"""Benchmark: one FIRM local step (M = 1 and M = 2) against one TRL `GRPOTrainer` step (M = 1), per completion.

FIRM issue 8's target: FIRM at M = 2 objectives is at least 3x faster per completion than TRL's
GRPOTrainer at M = 1, on the same model, LoRA adapter, prompts and batch. Both sides run in one
process on the same machine, interleaved step by step, and the median over `--reps` steps is
reported (one warm-up step of each is run first and discarded).

What each side does in one timed step (B prompts x G samples = S completions of at most T tokens):

FIRM, through the project's code path (`firm.client.problem_sampler` + `firm.local_step.local_update`
with K = 1 and the `Firm` weighting rule of `firm.algorithms.firm`), as `benchmarks/local_step.py`:
  1. sample: the B prompts through the chat template, ONE prefill of B rows, the KV cache repeated
     G times, then the project's own decode loop (`rollout.sampler = fast`: LoRA merged for the
     rollout, preallocated KV cache; multinomial sampling at `rollout.temperature`, full vocabulary)
     for up to T tokens, stopping early when every row has emitted EOS (with `--int8`, a third FIRM
     variant samples with `rollout.precision = int8`, importance-corrected);
  2. reference forward: one no-grad forward with the adapter disabled (`algorithm.logprobs = fast`:
     the prompt prefix once per prompt, the fused LM head);
  3. score: the M objectives (positiveness = VADER; conciseness = word count);
  4. gradient forward: one forward with autograd on the LoRA parameters (fast log-probs as in 2);
  5. M backward passes of that one graph (`algorithm.vjp`, the project's default), giving g [M, d];
  6. Gram matrix and FIRM's regularised weighting solve on CPU (float64);
  7. Adam step along d = sum_m lambda_m g_m (optimizer state reset per call, as in every round).
  Timed: wall time around `local_update` (prompt-batch choice to the end of the Adam step).

TRL 1.16 `GRPOTrainer` (one optimizer step of `trainer.train()`, transformers' Trainer loop):
  per_device_train_batch_size = S (it counts completions), gradient_accumulation_steps = 1,
  num_generations = G, hence generation_batch_size = S and steps_per_generation = 1: one optimizer
  step consumes exactly the S completions of one generation.
  1. generate: the same prompts as chat messages (TRL applies the same chat template), HF
     `generate` with do_sample, top_k = 0, top_p = 1, the same temperature and max_completion_length
     = T, on S rows (TRL's sampler repeats each prompt G times, so the prefill is of S rows, not B);
  2. no "old log-prob" forward: TRL skips it when num_iterations = 1 and generation is aligned with
     the optimizer step, as FIRM does (its ratio is 1 on the first epoch);
  3. reference forward: beta = `algorithm.beta_kl` > 0 with a PEFT model, so one no-grad forward with
     the adapter disabled, as FIRM;
  4. reward: one reward function wrapping the project's `positiveness` objective;
  5. forward with grad (TRL also computes the per-token entropy, for its logs), the `dapo` loss
     (token-level mean over the batch, as FIRM's 1/N sum), one backward;
  6. Trainer bookkeeping: gradient norm (clipping is off, max_grad_norm = 0, as FIRM does not clip,
     but the Trainer still computes the norm for its logs), AdamW step (weight_decay = 0, so Adam),
     constant LR scheduler step, zero_grad, TRL's metric gathering.
  Timed: a `TrainerCallback` from `on_step_begin` to `on_step_end`, i.e. from before generation to
  after the optimizer step. Not counted: the dataloader fetching the S prompt rows (before
  `on_step_begin`) and the Trainer's log/save checks after `on_step_end` (logging and saving are off).
  The FIRM steps run inside that `on_step_end` callback, outside TRL's timed window: the order is
  TRL, FIRM, FIRM, TRL, ... (the two FIRM steps swap order every repetition).

Same on both sides: the model weights (both loaded by `firm.policy.build_policy`; TRL gets the
base model back with `unload()` and adds its own LoRA from a `peft_config` with the project's rank,
alpha, dropout and target modules), the compute dtype `--dtype` (below) on CPU, no gradient
checkpointing, no vLLM, no logging (report_to = "none"), learning rate `algorithm.lr`, the same B
prompts at each repetition (the prompts `problem_sampler` picks for round `rep`, client 0, step 0,
fed to TRL in that order with shuffling off).

Deliberate differences, and what they change:
- Completion lengths can differ (different random streams, and TRL's adapter keeps training across
  its steps while FIRM restarts every repetition from the same adapter): the mean completion length
  of each side is printed, with the time per completion token, so the reader can see it.
- TRL's prefill covers S rows where FIRM's covers B (a difference of the two implementations, kept).
- TRL computes per-token entropies and logs more metrics (its own overhead, kept).

Compute dtype (`--dtype`, float32 by default, or bfloat16), the same on both sides:
- float32: FIRM with `model.compute_dtype = float32`; TRL with the float32 base and `bf16 = False`
  (the figures of earlier runs, unchanged).
- bfloat16: FIRM with `model.compute_dtype = bfloat16` (frozen base stored in bfloat16, LoRA
  adapter and Adam state float32, log-probs through a float32 head: firm.precision). TRL gets the
  same bfloat16 base (`build_policy` at that dtype, then `unload()`; peft's default
  `autocast_adapter_dtype` keeps TRL's own LoRA float32, as FIRM's) AND `bf16 = True` in its
  GRPOConfig. That flag is how TRL / transformers run bf16 (GRPOConfig's own default is True): it is
  mixed precision through accelerate, which on CPU wraps the model's forward in
  `torch.autocast("cpu", torch.bfloat16)` (accelerate sets native_amp for any CPU, no hardware
  check), so TRL's generation, reference and gradient forwards run under autocast. Only setting the
  flag, on a float32 model, would make autocast recast every frozen weight at every op, decode
  steps included (its cast cache keeps only weights that require grad); loading the model in
  bfloat16 as well (what TRL does itself given `model_init_kwargs={"dtype": "bfloat16"}`) gives
  both sides the same bfloat16 weights. Differences that remain: under autocast TRL's LoRA
  matmuls run in bfloat16 (FIRM's stay float32), and TRL's log-probs use the model's bfloat16 head
  (`cast_lm_head_to_fp32`, its float32 head option, refuses tied embeddings, which SmolLM2 has).
  If TRL fails at bfloat16 the script prints the error and exits with 1.
The first line names the CPU's native-bfloat16 features (`firm.precision.cpu_bf16_features()`, or
`none (emulated)`): without them bfloat16 runs emulated on both sides, several times slower than
float32, and the times are printed as measured. The ratio lines name the dtype they were taken at.

    python benchmarks/trl_step.py [--model smollm2-135m|tiny] [--reps 3] [--prompts 4] [--samples 4] [--tokens 32]
                                  [--int8] [--dtype float32|bfloat16]

Needs the optional extra: `pip install -e .[bench]` (or `make bench-trl`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from firm.algorithms.firm import Firm
from firm.client import problem_sampler, prompt_batch
from firm.config import Config
from firm.data import Prompt, load_prompts
from firm.local_step import local_update
from firm.objectives import REGISTRY, Objective
from firm.policy import Policy, build_policy
from firm.precision import cpu_bf16_features
from firm.validation import load_config

OBJECTIVE_SETS = (("positiveness",), ("positiveness", "conciseness"))
"""FIRM's objectives at M = 1 and M = 2; TRL runs the first set (M = 1)."""


def build_config(args: argparse.Namespace, names: tuple[str, ...], *extra: str) -> Config:
    """The project's default config with this benchmark's model, batch and objectives (CPU, --dtype, K = 1)."""
    return load_config(
        None,
        [
            f"model.name={args.model}",
            "model.device=cpu",
            f"model.compute_dtype={args.dtype}",
            f"objectives.names={list(names)!r}".replace("'", '"'),
            f"rollout.prompts_per_step={args.prompts}",
            f"rollout.samples_per_prompt={args.samples}",
            f"rollout.max_new_tokens={args.tokens}",
            "algorithm.local_steps=1",
            *extra,
        ],
    )


def firm_step(policy: Policy, config: Config, shard: list[Prompt], rep: int) -> tuple[float, float, int]:
    """One FIRM local step from the policy's current adapter; returns (seconds, mean completion tokens, completions)."""
    objectives: list[tuple[str, Objective]] = [(n, REGISTRY[n]) for n in config.objectives.names]
    algorithm = Firm.from_config(config)
    a = config.algorithm
    sampler = problem_sampler(policy, objectives, shard, config, rep, 0)
    start = time.perf_counter()
    result = local_update(policy.params, sampler, algorithm.weights, 1, a.inner_epochs, a.optimizer, a.lr)
    seconds = time.perf_counter() - start
    tokens = result.steps[0]["completion_tokens"]
    assert isinstance(tokens, float)
    return seconds, tokens, result.num_samples


def text_of(item: Any) -> str:
    """A TRL prompt or completion (plain text, or a list of chat messages) as plain text."""
    return item if isinstance(item, str) else str(item[-1]["content"])


class TrlReward:
    """A TRL reward function wrapping one project objective; also records each batch's prompts and mean completion length."""

    def __init__(self, name: str) -> None:
        self.objective = REGISTRY[name]
        self.__name__ = name  # TRL names its reward metrics after the function
        self.mean_lengths: list[float] = []
        self.prompts: list[list[str]] = []

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        ids = kwargs["completion_ids"]
        self.mean_lengths.append(sum(len(c) for c in ids) / len(ids))
        texts = [text_of(p) for p in prompts]
        self.prompts.append(texts)
        return [float(r) for r in self.objective(texts, [text_of(c) for c in completions])]


def make_step_timer(after_step: Callable[[int], None]) -> Any:
    """A TrainerCallback timing each optimizer step (on_step_begin -> on_step_end), then calling after_step(step)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self._start)
            after_step(state.global_step - 1)

    return StepTimer()


def trl_trainer(args: argparse.Namespace, config: Config, prompt_texts: list[str], callback: Any, output_dir: str) -> Any:
    """A GRPOTrainer on a fresh copy of the project's base model with the project's LoRA config (M = 1, positiveness)."""
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from trl import GRPOConfig, GRPOTrainer

    # The project's loader, then the base model back (no LoRA): TRL adds its own adapter from peft_config.
    # At --dtype bfloat16 the base comes back in bfloat16, the same weights as FIRM's (module docstring).
    loaded = quiet_build_policy(config)
    base = loaded.model.unload()
    tokenizer = loaded.tokenizer
    rows: list[dict[str, Any]]
    if getattr(tokenizer, "chat_template", None):
        rows = [{"prompt": [{"role": "user", "content": t}]} for t in prompt_texts]
    else:  # the tiny model has no chat template; FIRM then feeds the raw text too
        rows = [{"prompt": t} for t in prompt_texts]
    ro, alg, lora = config.rollout, config.algorithm, config.lora
    grpo_args = GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=ro.prompts_per_step * ro.samples_per_prompt,  # completions, not prompts
        gradient_accumulation_steps=1,
        num_generations=ro.samples_per_prompt,
        max_completion_length=ro.max_new_tokens,
        temperature=ro.temperature,
        top_p=1.0,
        top_k=0,
        beta=alg.beta_kl,
        epsilon=alg.clip_eps,
        num_iterations=alg.inner_epochs,
        loss_type="dapo",
        learning_rate=alg.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        max_steps=args.reps + 1,
        shuffle_dataset=False,
        seed=config.federation.seed,
        use_vllm=False,
        use_cpu=True,
        bf16=config.model.compute_dtype == "bfloat16",  # TRL's bf16: accelerate autocast (module docstring)
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
    )
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft accepts float alpha
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return GRPOTrainer(
        model=base,
        reward_funcs=[TrlReward("positiveness")],
        args=grpo_args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[callback],
        peft_config=peft_config,
    )


def quiet_build_policy(config: Config) -> Policy:
    """`build_policy` without the "bfloat16 emulated" RuntimeWarning (main prints the dtype's reason once)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*bfloat16 runs emulated", category=RuntimeWarning)
        return build_policy(config.model, config.lora, seed=config.federation.seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="`smollm2-135m` (the project's default) or `tiny`")
    parser.add_argument("--reps", type=int, default=3, help="timed steps of each kind (after one warm-up each)")
    parser.add_argument("--prompts", type=int, default=4, help="B")
    parser.add_argument("--samples", type=int, default=4, help="G")
    parser.add_argument("--tokens", type=int, default=32, help="max new tokens T")
    parser.add_argument("--int8", action="store_true", help="also time FIRM at M=2 with rollout.precision=int8")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype of both sides (module docstring)"
    )
    args = parser.parse_args()
    features = cpu_bf16_features()
    print(
        f"CPU: {torch.cpu.get_capabilities().get('cpu_name', '?')}, native bfloat16: {', '.join(features) or 'none (emulated)'}"
    )
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5.x renames (e.g. gradient_checkpointing)
    try:
        import trl
    except ImportError:
        print(
            "benchmarks/trl_step.py needs TRL, an optional extra: pip install -e .[bench]  (or: make bench-trl)", file=sys.stderr
        )
        return 2

    from transformers import PrinterCallback

    configs = {f"M={len(names)}": build_config(args, names) for names in OBJECTIVE_SETS}
    if args.int8:
        configs["M=2 int8 rollouts"] = build_config(args, OBJECTIVE_SETS[1], "rollout.precision=int8")
    config = configs["M=1"]
    seed, ro, alg, lora = config.federation.seed, config.rollout, config.algorithm, config.lora
    shard = load_prompts("builtin")
    # The prompts FIRM's sampler picks at repetition `rep` (round rep, client 0, step 0), in order, for TRL.
    batches = [prompt_batch(shard, seed, rep, 0, 0, ro.prompts_per_step) for rep in range(args.reps + 1)]
    prompt_texts = [p.text for batch in batches for p in batch]

    policy = quiet_build_policy(config)
    print(f"compute dtype {args.dtype} on both sides: FIRM {policy.precision.reason}; TRL bf16={args.dtype == 'bfloat16'}")
    start_adapter = policy.get_adapter()
    firm_runs: dict[str, list[tuple[float, float, int]]] = {m: [] for m in configs}

    def run_firm(rep: int) -> None:
        order = sorted(configs) if rep % 2 == 0 else sorted(configs, reverse=True)
        for m in order:
            policy.set_adapter(start_adapter)  # every repetition is a round's first local step
            firm_runs[m].append(firm_step(policy, configs[m], shard, rep))

    timer = make_step_timer(run_firm)
    with tempfile.TemporaryDirectory(prefix="firm-trl-bench-") as output_dir:
        try:
            trainer = trl_trainer(args, config, prompt_texts, timer, output_dir)
            trainer.remove_callback(PrinterCallback)  # its end-of-training metrics dict would clutter the table
            reward = trainer.reward_funcs[0]
            trainer.train()
        except Exception as err:
            if args.dtype == "float32":
                raise
            print(f"TRL {trl.__version__} could not run at {args.dtype} on {platform.machine()} CPU: {type(err).__name__}: {err}")
            return 1
    if len(timer.seconds) != args.reps + 1 or any(len(v) != args.reps + 1 for v in firm_runs.values()):
        raise RuntimeError(f"expected {args.reps + 1} steps of each kind, got TRL {len(timer.seconds)}")
    # TRL must have seen, step by step, FIRM's B prompts, each G times in a row.
    expected = [[p.text for p in batch for _ in range(ro.samples_per_prompt)] for batch in batches]
    if reward.prompts != expected:
        raise RuntimeError("TRL's prompts differ from FIRM's: the comparison would not be on the same batch")

    num_completions = ro.prompts_per_step * ro.samples_per_prompt
    rows: list[tuple[str, list[float], float]] = []  # (label, timed seconds per step, mean completion tokens)
    for m, runs in firm_runs.items():
        assert all(n == num_completions for _, _, n in runs)
        timed = runs[1:]  # drop the warm-up
        label = f"FIRM {m} ({'+'.join(configs[m].objectives.names)})"
        rows.append((label, [s for s, _, _ in timed], statistics.mean(t for _, t, _ in timed)))
    rows.append(("TRL GRPOTrainer M=1 (positiveness)", timer.seconds[1:], statistics.mean(reward.mean_lengths[1:])))

    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("torch", "transformers", "peft", "trl", "accelerate"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; {versions}")
    print(
        f"settings: model {args.model}, LoRA r={lora.r} alpha={lora.alpha:g} on {','.join(lora.target_modules)}, "
        f"B={ro.prompts_per_step} prompts x G={ro.samples_per_prompt} samples = {num_completions} completions/step, "
        f"max_new_tokens={ro.max_new_tokens}, temperature={ro.temperature:g}, beta_kl={alg.beta_kl:g}, lr={alg.lr:g}, "
        f"{args.dtype} CPU; median of {args.reps} interleaved steps each after 1 warm-up (trl {trl.__version__})\n"
    )
    print(f"{'':38s} {'s/step':>8s} {'s/completion':>13s} {'mean tokens':>12s} {'ms/token':>9s}   steps (s)")
    med: dict[str, float] = {}
    for label, seconds, tokens in rows:
        med[label] = statistics.median(seconds)
        per_token = 1000 * med[label] / (num_completions * tokens)
        each = " ".join(f"{s:.2f}" for s in seconds)
        print(f"{label:38s} {med[label]:8.2f} {med[label] / num_completions:13.3f} {tokens:12.1f} {per_token:9.2f}   {each}")
    trl_med = med[rows[-1][0]] / num_completions
    firm1, firm2 = (med[rows[i][0]] / num_completions for i in (0, 1))
    at = "" if args.dtype == "float32" else f" at {args.dtype}"  # the float32 lines as before
    print(f"\nratio TRL(M=1) / FIRM(M=1) per completion{at}: {trl_med / firm1:.2f}")
    print(f"ratio TRL(M=1) / FIRM(M=2) per completion{at}: {trl_med / firm2:.2f}   (issue 8 target: >= 3)")
    if args.int8:
        firm2_int8 = med[rows[2][0]] / num_completions
        print(f"ratio TRL(M=1) / FIRM(M=2, int8 rollouts) per completion{at}: {trl_med / firm2_int8:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
