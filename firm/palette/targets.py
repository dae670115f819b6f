"""Palette targets as the user writes them: absolute values, improvements over the reference mean, or reference quantiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Target:
    """One value's target as the user wrote it: `kind` absolute (0.9), improvement (+0.05) or quantile (q0.8)."""

    name: str
    kind: Literal["absolute", "improvement", "quantile"]
    value: float

    def __str__(self) -> str:
        if self.kind == "absolute":
            return f"{self.name}={self.value:g}"
        if self.kind == "improvement":
            return f"{self.name}={self.value:+g}"
        return f"{self.name}=q{self.value:g}"


def parse_targets(spec: str, names: Sequence[str]) -> list[Target]:
    """Parse "harmlessness=0.9,helpfulness=+0.02,positiveness=q0.7" against the run's objective names.

    `0.9` is an absolute expected reward, `+0.02` / `-0.01` a change from the reference's mean,
    `q0.7` the reference's 0.7-quantile of that reward. Values not named are unconstrained.
    A leading sign always means a change, so a negative absolute target is written as a `Target`
    in Python. Raises ValueError naming the bad piece.
    """
    targets: list[Target] = []
    seen: set[str] = set()
    for piece in (p.strip() for p in spec.split(",")):
        if not piece:
            continue
        name, sep, raw = (s.strip() for s in piece.partition("="))
        if not sep or not name or not raw:
            raise ValueError(f"palette target {piece!r}: expected name=value, e.g. harmlessness=0.9")
        if name not in names:
            raise ValueError(f"palette target {piece!r}: {name!r} is not an objective of this run ({', '.join(names)})")
        if name in seen:
            raise ValueError(f"palette target {piece!r}: {name!r} is given twice")
        seen.add(name)
        kind: Literal["absolute", "improvement", "quantile"] = "absolute"
        text = raw
        if raw[0] in "qQ":
            kind, text = "quantile", raw[1:]
        elif raw[0] in "+-":
            kind = "improvement"
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"palette target {piece!r}: {raw!r} is not a number, +change, -change or q<quantile>") from None
        if not math.isfinite(value):
            raise ValueError(f"palette target {piece!r}: must be finite")
        if kind == "quantile" and not 0.0 < value < 1.0:
            raise ValueError(f"palette target {piece!r}: a quantile must lie strictly between 0 and 1")
        targets.append(Target(name, kind, value))
    if not targets:
        raise ValueError("palette targets: none given; write e.g. harmlessness=0.9,helpfulness=0.5")
    return targets
