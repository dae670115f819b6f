"""What the benchmarks that compare compute dtypes share: the `--dtypes` option and one policy per dtype.

Imported by `benchmarks/local_step.py` and `benchmarks/rollout.py` (run as scripts from the project
root, so this folder is on sys.path).
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from typing import Any

import torch

from firm.policy import Policy, build_policy
from firm.precision import ComputeDtypeName

DTYPES: tuple[ComputeDtypeName, ...] = ("float32", "bfloat16")
SHORT = {"float32": "fp32", "bfloat16": "bf16"}
BYTES = {"float32": 4, "bfloat16": 2}


def parse_dtypes(spec: str) -> list[str]:
    """`--dtypes`: a comma-separated subset of DTYPES, in the order given, without repeats."""
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    bad = [n for n in names if n not in DTYPES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{spec!r}: a comma-separated subset of {', '.join(DTYPES)}")
    return names


def build_policies(config: Any, dtypes: list[str]) -> dict[str, Policy]:
    """One policy per compute dtype, all with the float32 build's perturbed adapter; prints each dtype's reason."""
    policies: dict[str, Policy] = {}
    adapter = None
    for dtype in ("float32", "bfloat16"):  # float32 first: it draws the perturbed adapter
        if dtype not in dtypes and not (dtype == "float32" and adapter is None):
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            policy = build_policy(dataclasses.replace(config.model, compute_dtype=dtype), config.lora, seed=0)
        if adapter is None:
            with torch.no_grad():  # a non-trivial adapter, as after some training (B = 0 at init)
                gen = torch.Generator().manual_seed(0)
                for p in policy.params.values():
                    p.add_(0.01 * torch.randn(p.shape, generator=gen))
            adapter = policy.get_adapter()
        else:
            policy.set_adapter(adapter)
        if dtype in dtypes:
            policies[dtype] = policy
            print(f"{dtype}: {policy.precision.reason}")
            for w in caught:
                if issubclass(w.category, RuntimeWarning):
                    print(f"  warning: {w.message}")
        else:  # float32 was built only to draw the adapter a bfloat16-only run starts from
            del policy
    return policies
