"""Benchmark: compressed uploads (docs/compression.md) against uncompressed ones, same run, same seed.

Runs one federated FIRM run per scheme (none, int8 per tensor, int8 per block of 256, top-k 10 %
with error feedback, top-k 10 % without) and prints, per scheme, the run's upload bytes and their
ratio to the uncompressed run, and the final held-out reward per objective with its relative
difference to the uncompressed run (the target for int8 is within 2 %).

    python benchmarks/compression.py [--model tiny] [--rounds N] [--out runs/compression-tiny] [key=value ...]

`--model tiny` (the default) trains the random tiny model on the positiveness/conciseness
objectives with a learning rate at which its reward moves (tests/test_learning.py's setup);
any other model (e.g. `--model smollm2-135m`, the packaged SmolLM2) uses the demo's objectives and
data at a reduced budget (benchmarks/compare.py's). Each run lands in `<out>/<scheme>/`; a
completed one is read back instead of run again, an interrupted one is resumed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import safetensors.torch

from firm.compression import decode_upload, encode_uploads
from firm.train import resume, run
from firm.validation import load_config

SCHEMES: dict[str, list[str]] = {
    "none": ["compression.kind=none"],
    "int8": ["compression.kind=int8", "compression.block=0"],
    "int8-block256": ["compression.kind=int8", "compression.block=256"],
    "topk10-ef": ["compression.kind=topk", "compression.topk=0.1", "compression.error_feedback=true"],
    "topk10-no-ef": ["compression.kind=topk", "compression.topk=0.1", "compression.error_feedback=false"],
}
"""Scheme name -> its config overrides; `none` is the reference every other scheme is compared with."""

TINY = [
    "model.name=tiny",
    'objectives.names=["positiveness", "conciseness"]',
    "objectives.preference=[1, 0]",
    'data.sources=["builtin"]',
    "data.partition=iid",
    "data.provocative_ratios=[]",
    "algorithm.name=firm",
    "algorithm.reg=5.0",
    "algorithm.lr=0.02",
    "federation.num_clients=4",
    "federation.clients_per_round=2",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=24",
    "eval.num_prompts=16",
    "eval.samples_per_prompt=4",
]
"""tests/test_learning.py's setup: on it the tiny model's positiveness rises measurably in 12 rounds."""

REDUCED = ["algorithm.local_steps=1", "eval.num_prompts=8"]
"""A real model (SmolLM2): the demo's objectives and data at benchmarks/compare.py's reduced budget."""


def _run(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """Run (or read back, or resume) one scheme; returns its summary.json."""
    summary_path = run_dir / "summary.json"
    status = json.loads(summary_path.read_text())["status"] if summary_path.is_file() else None
    if status != "completed":
        if (run_dir / "config.toml").is_file():
            resume(run_dir)
        else:
            run(load_config(None, overrides), reuse_model=True)  # the base model stays loaded across schemes
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    return summary


def payload_error(reference_dir: Path, scheme: list[str]) -> float:
    """Mean over rounds of ||decode(C(u_t)) - u_t|| / ||u_t||, u_t = the uncompressed run's global update of round t.

    u_t is read from consecutive checkpoints (global_t - global_{t-1}, t >= 2): real adapter
    updates, each compressed once without error feedback, so the figure is the compression's own
    error, free of the RL noise that makes two runs' final rewards differ.
    """
    config = load_config(None, [*scheme, "compression.error_feedback=false"]).compression
    checkpoints = sorted((reference_dir / "checkpoints").glob("round_*"))
    adapters = [safetensors.torch.load_file(str(c / "global.safetensors")) for c in checkpoints]
    errors = []
    for before, after in itertools.pairwise(adapters):
        update = {n: after[n] - before[n] for n in after}
        payloads, _ = encode_uploads([update], config, {})
        sent = decode_upload(payloads[0])
        lost = sum(float((sent[n] - u).pow(2).sum()) for n, u in update.items())
        norm = sum(float(u.pow(2).sum()) for u in update.values())
        errors.append((lost / norm) ** 0.5 if norm > 0 else 0.0)
    return sum(errors) / len(errors) if errors else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, smollm2-135m, or any model.name")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run (default: 12 on tiny, 2 otherwise)")
    parser.add_argument("--out", default=None, help="parent directory of the runs (default runs/compression-<model>)")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = parser.parse_args()
    tiny = args.model == "tiny"
    rounds = args.rounds if args.rounds is not None else (12 if tiny else 2)
    out = Path(args.out or f"runs/compression-{args.model.replace('/', '_')}")
    # only the final evaluation is compared: evaluating every round would double a tiny run's time
    base = [*(TINY if tiny else [f"model.name={args.model}", *REDUCED]), f"federation.rounds={rounds}", f"eval.every={rounds}"]
    base += [f'output.dir="{out.as_posix()}"', "output.progress=false", *args.overrides]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )
    print(f"model {args.model}, {rounds} rounds, runs in {out}/<scheme>\n")
    results: dict[str, dict[str, Any]] = {}
    for name, scheme in SCHEMES.items():
        start = time.perf_counter()
        results[name] = _run([*base, *scheme, f"output.name={name}"], out / name)
        print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    ref = results["none"]
    objectives = list(ref["final_eval"])
    head = f"{'scheme':<15}{'upload bytes':>14}{'ratio':>8}{'payload err':>13}"
    head += "".join(f"{o[:14]:>16}{'rel. diff':>11}" for o in objectives)
    print(head)
    print("-" * len(head))
    for name, summary in results.items():
        ratio = summary["total_upload_bytes"] / ref["total_upload_bytes"]
        cells = ""
        for o in objectives:
            value, base_value = summary["final_eval"][o], ref["final_eval"][o]
            rel = (value - base_value) / abs(base_value) if base_value else float("nan")
            cells += f"{value:>16.4f}{rel:>+10.2%} "
        error = payload_error(out / "none", SCHEMES[name])
        print(f"{name:<15}{summary['total_upload_bytes']:>14,}{ratio:>8.3f}{error:>13.4f}{cells}")
    initial = ref["initial_eval"]
    print("\ninitial eval (round 0, all schemes): " + ", ".join(f"{o} {initial[o]:.4f}" for o in objectives))
    print(
        "uncompressed gain over the run:      " + ", ".join(f"{o} {ref['final_eval'][o] - initial[o]:+.4f}" for o in objectives)
    )
    print("payload err: relative L2 error of one payload on the uncompressed run's round updates (no error feedback)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
