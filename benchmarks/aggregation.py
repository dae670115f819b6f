"""Benchmark: the server's side of a round for 10, 100 and 1,000 clients: time and peak memory.

Each client's delta has the tiny model's LoRA shapes (the adapter of the tiny policy the tests
build; `--shapes smollm2-135m` for SmolLM2-135M's, 56x larger), drawn on the fly from a generator seeded by (seed, round, client), 1 in 100 scaled by
100 so the norm screen has an outlier to reject, then encoded as the engines encode uploads
(`firm.codec.encode`). The server's path is what the in-process engine runs: decode, the
per-update checks, the round's aggregator, then `close_round` (norm screen, running mean, FIRM's
server update). Only this server part is timed; drawing and encoding the deltas is the
clients' work and is not. Modes:

- `stream`: `aggregation.max_norm_ratio = 0`: each update goes straight into the running mean;
- `screen`: the default norm screen (ratio 10): updates held in `firm.robust.SpilledUpdates`
  (scalars in memory, tensors encoded in a spill that moves to disk beyond 1 MiB);
- `buffer-decoded`: the behaviour before the spill: every decoded update kept in memory until
  the round ends, then `firm.robust.screen` (the reference the spill must match).

Every (mode, clients) pair runs in a fresh subprocess, so one measurement's allocations cannot
hide another's. Torch's CPU tensors are invisible to tracemalloc, so memory is the process's
resident set: the baseline is the RSS after imports, model build and one warm-up round of 10
clients; then the kernel's peak-RSS mark is reset to it (`/proc/self/clear_refs`, Linux) and
`ru_maxrss` after the rounds is the peak of the measured rounds alone (without the reset, the
build's own peak could hide their growth; the table says when it could not be reset). RSS is also sampled after
every client and at round end. The growth from 10 to 1,000 clients is peak RSS(1,000) / peak
RSS(10) (target < 1.05). Page cache of the spill file is the kernel's, not the process's.

    python benchmarks/aggregation.py [--clients 10 100 1000] [--rounds 3] [--modes stream screen buffer-decoded]
                                     [--shapes tiny|smollm2-135m]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from firm.algorithms import REGISTRY
from firm.codec import Adapter, decode, encode
from firm.engines.server import close_round, expected_uploads
from firm.local_step import Timer
from firm.policy import build_policy
from firm.robust import Candidate, RoundFailed, SpilledUpdates, check_enough, screen
from firm.validation import load_config

MODES = {"stream": 0.0, "screen": 10.0, "buffer-decoded": 10.0}  # mode -> aggregation.max_norm_ratio
OUTLIER_EVERY = 100  # client ids 99, 199, ... send their delta x 100


def smollm2_adapter() -> Adapter:
    """Zeros of SmolLM2-135M's LoRA shapes (r = 8 on q_proj, v_proj), without loading the model.

    30 layers, hidden size 576, 3 KV heads x 64 = 192 for v_proj: d = 460,800, the figure of
    docs/design.md section 9.2 (1.8 MB in float32).
    """
    shapes = {"q_proj": (576, 576), "v_proj": (192, 576)}  # (out, in)
    adapter: Adapter = {}
    for layer in range(30):
        for module, (out, inp) in shapes.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            adapter[f"{prefix}.lora_A.default.weight"] = torch.zeros(8, inp)
            adapter[f"{prefix}.lora_B.default.weight"] = torch.zeros(out, 8)
    return adapter


def rss_mb() -> float:
    """The process's resident set now, MB (psutil if installed, else /proc/self/statm)."""
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """The process's peak resident set (ru_maxrss, KB on Linux), MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def client_payload(adapter: Adapter, seed: int, round_idx: int, client_id: int) -> bytes:
    """One client's upload: a seeded random delta of the adapter's shapes, encoded as the engines do."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + round_idx * 10_007 + client_id)
    scale = 1e-3 * (100.0 if client_id % OUTLIER_EVERY == OUTLIER_EVERY - 1 else 1.0)
    return encode({n: scale * torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in adapter.items()})


def server_round(
    mode: str, config: Any, algorithm: Any, adapter: Adapter, round_idx: int, num_clients: int, samples: list[float]
) -> tuple[Adapter, float, int]:
    """One round of the server's path over `num_clients` uploads; (new adapter, server seconds, rejected)."""
    client_ids = list(range(num_clients))
    expected = expected_uploads(algorithm)
    timer = Timer()
    server = 0.0
    dropped: dict[int, str] = {}
    weights: dict[int, list[float]] = {}
    steps: dict[int, list[dict[str, Any]]] = {}
    aggregator = algorithm.new_aggregator()
    buffered: list[Candidate] = []
    with SpilledUpdates(adapter, expected, MODES[mode]) as held:
        for client_id in client_ids:
            payload = client_payload(adapter, 0, round_idx, client_id)
            start = time.perf_counter()
            candidate = Candidate(client_id, [decode(payload)], 8.0)
            if mode == "screen":
                held.add(candidate)
            elif mode == "stream":
                passed, rejected = screen([candidate], adapter, expected, 0.0)
                dropped.update(rejected)
                for c in passed:
                    aggregator.add(c.uploads, c.weight)
            else:
                buffered.append(candidate)
            del candidate, payload
            weights[client_id] = [0.5, 0.5]  # what the engine logs per client, kept to round end
            steps[client_id] = [{"loss": 0.0}]
            server += time.perf_counter() - start
            samples.append(rss_mb())
        start = time.perf_counter()
        if mode == "buffer-decoded":  # close_round as it was: screen the decoded updates, then aggregate
            passed, rejected = screen(buffered, adapter, expected, MODES[mode])
            dropped.update(rejected)
            for c in passed:
                aggregator.add(c.uploads, c.weight)
            for client_id in dropped:
                weights.pop(client_id, None)
                steps.pop(client_id, None)
            check_enough(config, round_idx, "train", client_ids, dropped)
            new_adapter = algorithm.server_update(adapter, aggregator)
            aggregator.update_drift()
        else:
            new_adapter, _, _ = close_round(
                config, algorithm, adapter, aggregator, held, round_idx, client_ids, dropped, weights, steps, timer
            )
        server += time.perf_counter() - start
    samples.append(rss_mb())
    return new_adapter, server, len(dropped)


def child(mode: str, num_clients: int, rounds: int, shapes: str) -> dict[str, Any]:
    """One measurement in this (fresh) process: baseline after the build and a warm-up, then the rounds."""
    overrides = ["model.name=tiny", "federation.min_clients=1", f"aggregation.max_norm_ratio={MODES[mode]}"]
    config = load_config(None, overrides)
    policy = build_policy(config.model, config.lora, seed=0)
    algorithm = REGISTRY[config.algorithm.name](config)
    adapter = policy.get_adapter() if shapes == "tiny" else smollm2_adapter()
    samples: list[float] = []
    adapter, _, _ = server_round(mode, config, algorithm, adapter, 0, 10, samples)  # warm-up, untimed
    gc.collect()
    baseline = rss_mb()
    was_reset = reset_peak()
    baseline_peak = peak_mb()  # = the RSS now by the kernel's own count, once reset
    samples.clear()
    seconds, rejected = [], []
    for round_idx in range(1, rounds + 1):
        try:
            adapter, server, n_rejected = server_round(mode, config, algorithm, adapter, round_idx, num_clients, samples)
        except RoundFailed as err:  # not expected: min_clients = 1
            raise SystemExit(f"round {round_idx} failed: {err}") from None
        seconds.append(server)
        rejected.append(n_rejected)
    peak = peak_mb()
    return {
        "mode": mode,
        "clients": num_clients,
        "rounds": rounds,
        "d": sum(t.numel() for t in adapter.values()),
        "payload_bytes": len(client_payload(adapter, 0, 0, 0)),
        "round_s": statistics.median(seconds),
        "client_ms": 1000 * statistics.median(seconds) / num_clients,
        "rejected": rejected[0],
        "baseline_mb": baseline,
        "peak_mb": peak,
        "peak_reset": was_reset,
        "peak_above_mb": peak - baseline_peak,
        "sampled_above_mb": max(samples) - baseline,
        "adapter_sha256": hashlib.sha256(b"".join(t.numpy().tobytes() for _, t in sorted(adapter.items()))).hexdigest(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--shapes",
        choices=["tiny", "smollm2-135m"],
        default="tiny",
        help="LoRA shapes of the deltas: the tiny model's adapter, or SmolLM2-135M's (built from its sizes, not loaded)",
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CLIENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.rounds, args.shapes)))
        return 0

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, python {platform.python_version()}")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for n in args.clients:  # modes interleaved, so a change in the machine's load hits them alike
        for mode in args.modes:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, str(n)]
            cmd += ["--rounds", str(args.rounds), "--shapes", args.shapes]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{mode}, {n} clients failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            results[mode, n] = json.loads(done.stdout.strip().splitlines()[-1])
    first = next(iter(results.values()))
    print(
        f"{args.shapes} LoRA shapes: d = {first['d']:,} parameters, {first['payload_bytes']:,} bytes per upload; "
        f"{args.rounds} rounds per count, median shown; 1 in {OUTLIER_EVERY} clients sends its delta x 100"
    )
    if not first["peak_reset"]:
        print("note: /proc/self/clear_refs not writable: the peak includes the model build's")
    print(
        f"\n{'mode':15s} {'clients':>7s} {'s/round':>8s} {'ms/client':>9s} {'rejected':>8s} "
        f"{'baseline MB':>11s} {'peak MB':>8s} {'peak-base':>9s} {'sampled-base':>12s}"
    )
    for (mode, n), r in sorted(results.items(), key=lambda kv: (args.modes.index(kv[0][0]), kv[0][1])):
        print(
            f"{mode:15s} {n:7d} {r['round_s']:8.3f} {r['client_ms']:9.3f} {r['rejected']:8d} "
            f"{r['baseline_mb']:11.1f} {r['peak_mb']:8.1f} {r['peak_above_mb']:9.1f} {r['sampled_above_mb']:12.1f}"
        )
    lo, hi = min(args.clients), max(args.clients)
    print(f"\ngrowth of the server's peak RSS from {lo} to {hi} clients (target < 1.05 for stream and screen):")
    for mode in args.modes:
        a, b = results[mode, lo], results[mode, hi]
        print(
            f"  {mode:15s} {b['peak_mb'] / a['peak_mb']:.3f}  ({a['peak_mb']:.1f} -> {b['peak_mb']:.1f} MB; "
            f"above baseline {a['peak_above_mb']:.1f} -> {b['peak_above_mb']:.1f} MB; "
            f"{b['client_ms']:.3f} ms per client at {hi})"
        )
    for n in args.clients:  # the spill must not change what is computed: same adapter, bit for bit
        digests = {mode: results[mode, n]["adapter_sha256"] for mode in args.modes if mode != "stream"}
        if len(set(digests.values())) > 1:
            print(f"MISMATCH at {n} clients: the final adapters differ between {sorted(digests)}")
            return 1
    if {"screen", "buffer-decoded"} <= set(args.modes):
        print("screen and buffer-decoded end on the same adapter, bit for bit, at every client count")
    return 0


if __name__ == "__main__":
    sys.exit(main())
