"""Per-round overhead of the Flower engine vs the in-process engine, measured side by side in one run.

    python benchmarks/flower_overhead.py [--rounds 4] [--nodes 2] [--per-message] [key=value ...]

Starts a loopback SuperLink and N SuperNodes (`firm flower up`, warm workers unless
--per-message), runs the same tiny-model config with both engines, and prints, per engine, the
median round wall time (from metrics.jsonl `time_s.round`, evaluation excluded) and the ratio
Flower / in-process. For the Flower rounds it splits the wall time into the clients' own compute
(their reported phases, per client: they run in parallel on their nodes) and the rest (messaging,
SuperNode polling, (de)serialisation), to show what dominates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firm.engines.flower import local
from firm.engines.flower.submit import submit
from firm.train import run
from firm.validation import load_config

TINY = [
    "model.name=tiny",
    'objectives.names=["positiveness", "conciseness"]',
    'data.sources=["builtin"]',
    "data.partition=iid",
    "data.provocative_ratios=[]",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=16",
    "eval.num_prompts=4",
    "output.progress=false",
]
CLIENT_PHASES = ("rollout", "scoring", "forward", "backward", "solve", "step")


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def round_seconds(row: dict[str, Any]) -> float:
    t = row["time_s"]
    return float(t["round"] - t.get("eval", 0.0))


def client_seconds(row: dict[str, Any]) -> float:
    """The clients' own compute this round, per client (the phases they report, summed, over the clients:
    on Flower they run in parallel on their nodes)."""
    total = sum(row["time_s"].get(p, 0.0) for p in CLIENT_PHASES)
    return total / max(1, len(row["clients"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument(
        "--per-message", action="store_true", help="Flower's per-message ClientApp processes, not the warm worker"
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="firm-flower-bench-") as tmp:
        base = [
            *TINY,
            f"federation.num_clients={args.nodes}",
            f"federation.clients_per_round={args.nodes}",
            f"federation.rounds={args.rounds}",
            f'output.dir="{tmp}"',
            *args.overrides,
        ]
        inproc = run(load_config(None, [*base, "output.name=inprocess"]))
        with local.local_cluster(
            Path(tmp) / "cluster", args.nodes, superlink=f"127.0.0.1:{local.free_port()}", warm=not args.per_message
        ) as c:
            flower_dir = submit(
                load_config(None, [*base, "engine=flower", f'engine.superlink="{c.superlink}"', "output.name=flower"]), quiet=True
            )
        # Round 1 includes each node's one-off start-up (model, scorers, prompts): report it apart.
        a, b = rows(inproc.run_dir), rows(flower_dir)
        in_med = statistics.median(round_seconds(r) for r in a[1:])
        fl_med = statistics.median(round_seconds(r) for r in b[1:])
        fl_client = statistics.median(client_seconds(r) for r in b[1:])
        print(
            f"tiny model, {args.nodes} clients per round, {args.rounds} rounds, {'per-message' if args.per_message else 'warm worker'}"
        )
        print(f"{'engine':<12s} {'round 1 (s)':>12s} {'median round 2.. (s)':>22s}")
        print(f"{'in-process':<12s} {round_seconds(a[0]):12.3f} {in_med:22.3f}")
        print(f"{'flower':<12s} {round_seconds(b[0]):12.3f} {fl_med:22.3f}")
        print(f"ratio flower / in-process (median round): {fl_med / in_med:.1f}x")
        print(
            f"flower round split: clients' own compute (mean per client) {fl_client:.3f} s, "
            f"the rest (messaging, SuperNode polling, serialisation) {fl_med - fl_client:.3f} s "
            f"({(fl_med - fl_client) / fl_med:.0%} of the round)"
        )
        same = all(r1["comm"]["upload_bytes"] > 0 for r1 in b)
        print(
            f"upload bytes per round: in-process {a[-1]['comm']['upload_bytes']}, flower {b[-1]['comm']['upload_bytes']} (counted: {same})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
