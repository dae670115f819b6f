"""Benchmark: FIRM vs its baselines on the demo's setup at a reduced budget, and the three claims.

Runs (or resumes) one preference sweep per algorithm on the embedded default config (SmolLM2,
helpfulness vs harmlessness, the demo's clients) with a reduced budget, writes the comparison
(`firm compare`), and prints the comparison table followed by the claims, measured side by side:

- FIRM's client weight drift vs MGDA's (lower is the claim);
- FIRM's hypervolume vs FedAvg's (better or equal is the claim);
- FIRM's upload vs FMGDA's (1/M is the claim).

    python benchmarks/compare.py [--divisions 2] [--rounds 2] [--out runs/compare-smollm2] [key=value ...]

The sweep is resumable: rerun the same command to finish an interrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from firm.sweep import sweep
from firm.validation import load_config

ALGORITHMS = ["firm", "fedavg", "mgda", "fmgda"]


def _closest_to_uniform(points: list[dict], algorithm: str) -> dict:
    mine = [p for p in points if p["algorithm"] == algorithm and p["status"] == "completed"]
    m = len(mine[0]["preference"])
    return min(mine, key=lambda p: sum((v - 1.0 / m) ** 2 for v in p["preference"]))


def _final_drift(root: Path, point: dict) -> float:
    rows = [json.loads(line) for line in (root / point["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    return float(sum(r["drift"]["weights"] for r in rows) / len(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--divisions", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="runs/compare-smollm2")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)
    config = load_config(
        None,
        [
            f"federation.rounds={args.rounds}",
            "algorithm.local_steps=1",
            "eval.num_prompts=8",
            f'output.dir="{out.parent.as_posix()}"',
            f"output.name={out.name}",
            *args.overrides,
        ],
    )
    result = sweep(config, ALGORITHMS, args.divisions)
    root = Path(result["path"])
    try:
        from firm.report import comparison_table, write_comparison

        html = write_comparison(root)
        print(comparison_table(root))
        print(f"comparison: {html}")
    except ImportError:
        pass
    points = result["points"]
    hv = (result.get("pareto") or {}).get("hypervolume", {})
    firm_pt, mgda_pt, fmgda_pt = (_closest_to_uniform(points, a) for a in ("firm", "mgda", "fmgda"))
    drift_firm, drift_mgda = _final_drift(root, firm_pt), _final_drift(root, mgda_pt)
    print("\nclaims (measured in this sweep):")
    print(
        f"  mean drift.weights over rounds, FIRM {drift_firm:.4f} vs MGDA {drift_mgda:.4f}: ratio {drift_firm / max(drift_mgda, 1e-12):.3f}"
    )
    if hv:
        print(f"  hypervolume, FIRM {hv.get('firm', float('nan')):.4f} vs FedAvg {hv.get('fedavg', float('nan')):.4f}")
    print(
        f"  upload bytes at p closest to uniform, FIRM {firm_pt['total_upload_bytes']:,} vs FMGDA {fmgda_pt['total_upload_bytes']:,}: "
        f"ratio {firm_pt['total_upload_bytes'] / fmgda_pt['total_upload_bytes']:.3f} (1/M = {1 / len(firm_pt['preference']):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
