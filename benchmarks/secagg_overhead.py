"""Per-round overhead of secure aggregation (Flower's SecAgg+) on loopback, in bytes and seconds, side by side in one run.

    python benchmarks/secagg_overhead.py [--rounds 4] [--nodes 3] [key=value ...]

Starts a loopback SuperLink and N SuperNodes with warm workers (`firm flower up`), runs the same
tiny-model config on Flower in the clear and then with `engine.secure_aggregation=true`, and
prints, from metrics.jsonl, the median over rounds 2.. (round 1 holds the nodes' start-up) of:
the bytes up and down per round (`comm`: the adapter and uploads in the clear; under SecAgg+ the
adapter, the protocol's records and the masked uploads), the seconds of the message exchange
(`time_s.exchange`: all four SecAgg+ stages, the server's unmasking included) and of the round
without evaluation; then SecAgg+'s split by stage, and the round-1 adapter's largest deviation
from the plain run's against the bound eta 2c / Q (+ one float32 spacing) of tests/test_secagg.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flower_overhead

from firm.engines.flower import local
from firm.engines.flower.submit import submit
from firm.validation import load_config

TINY = [
    *flower_overhead.TINY,
    "model.compute_dtype=float32",
    "aggregation.max_norm_ratio=0",  # refused under secure aggregation; off in both runs so they differ in one setting
    "output.report=false",
]
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def round_seconds(row: dict[str, Any]) -> float:
    t = row["time_s"]
    return float(t["round"] - t.get("eval", 0.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="firm-secagg-bench-") as tmp:
        base = [
            *TINY,
            f"federation.num_clients={args.nodes}",
            f"federation.clients_per_round={args.nodes}",
            f"federation.rounds={args.rounds}",
            f'output.dir="{tmp}"',
            *args.overrides,
        ]
        with local.local_cluster(Path(tmp) / "cluster", args.nodes, superlink=f"127.0.0.1:{local.free_port()}") as c:
            flower = [*base, "engine=flower", f'engine.superlink="{c.superlink}"']
            plain_dir = submit(load_config(None, [*flower, "output.name=plain"]), quiet=True)
            secure_config = load_config(None, [*flower, "engine.secure_aggregation=true", "output.name=secure"])
            secure_dir = submit(secure_config, quiet=True)
        plain, secure = rows(plain_dir)[1:], rows(secure_dir)[1:]
        print(f"tiny model, {args.nodes} clients per round, rounds 2..{args.rounds} (median), loopback, warm workers")
        print("| per round | in the clear | SecAgg+ | ratio |\n|---|---|---|---|")
        for label, get in (
            ("bytes up", lambda r: float(r["comm"]["upload_bytes"])),
            ("bytes down", lambda r: float(r["comm"]["download_bytes"])),
            ("seconds, message exchange", lambda r: float(r["time_s"]["exchange"])),
            ("seconds, round without eval", round_seconds),
        ):
            a, b = median([get(r) for r in plain]), median([get(r) for r in secure])
            print(f"| {label} | {a:,.3f} | {b:,.3f} | {b / a:.2f}x |".replace(".000 |", " |"))
        print("\n| SecAgg+ stage | seconds | bytes up | bytes down |\n|---|---|---|---|")
        for stage in STAGES:
            sa = [r["server"]["secure_aggregation"] for r in secure]
            print(
                f"| {stage} | {median([s['seconds'][stage] for s in sa]):.3f} "
                f"| {median([s['upload_bytes'][stage] for s in sa]):,.0f} | {median([s['download_bytes'][stage] for s in sa]):,.0f} |"
            )
        ours = load_file(secure_dir / "checkpoints" / "round_0001" / "global.safetensors")
        theirs = load_file(plain_dir / "checkpoints" / "round_0001" / "global.safetensors")
        eng = secure_config.engine
        step = 2 * eng.secagg_clipping_range / eng.secagg_quantization_range
        worst = max(
            float((ours[n] - t).abs().max()) / (secure_config.algorithm.server_lr * step + float(t.abs().max()) * 2**-23)
            for n, t in theirs.items()
        )
        deviation = max(float((ours[n] - t).abs().max()) for n, t in theirs.items())
        print(
            f"\nround-1 adapter, SecAgg+ vs in the clear: max |difference| {deviation:.3g}, "
            f"at most {worst:.2f} of the bound eta 2c/Q + float32 spacing (2c/Q = {step:.3g})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
