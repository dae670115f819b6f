"""Plumbing: run any `algorithm.name`, a federated algorithm or a non-federated reference.

`firm.train.run` trains a federation; the references (`centralized`, `local`: firm.references)
are built on it, like a sweep (firm.sweep), so they sit above it and the choice between them is
made here, once, for `firm.run`, `firm train`, `firm sweep` and `firm compare`.
"""

from __future__ import annotations

from typing import Any

from firm.config import REFERENCES, Config
from firm.references import REFERENCE_RUNS
from firm.train import RunResult
from firm.train import run as train_run


def run(config: Config, **kwargs: Any) -> RunResult:
    """`firm.train.run(config, **kwargs)`, or the reference `config.algorithm.name` names (which takes no options).

    `kwargs` (e.g. `reuse_model`) are for federated runs; a reference given any is refused, as it would ignore them.
    """
    name = config.algorithm.name
    if name in REFERENCES:
        if kwargs:
            raise TypeError(f"the reference {name!r} takes no run options (got {', '.join(sorted(kwargs))})")
        return REFERENCE_RUNS[name](config)
    return train_run(config, **kwargs)
