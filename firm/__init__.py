"""FIRM: federated multi-objective alignment of language models with one LoRA adapter per round."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from firm.version import __version__

if TYPE_CHECKING:
    from firm.config import Config
    from firm.train import RunResult


def run(config: Config) -> RunResult:
    """Train with `config`, any `algorithm.name` (a federated algorithm or a reference), and return the result (`firm.launch.run`)."""
    from firm.launch import run as _run

    return _run(config)


def __getattr__(name: str) -> Any:
    # Lazy, so that `import firm` does not import torch until needed.
    if name in ("Config", "ConfigError"):
        from firm import config

        return getattr(config, name)
    if name == "load_config":  # reads and validates (firm.validation)
        from firm import validation

        return validation.load_config
    raise AttributeError(name)


__all__ = ["Config", "ConfigError", "__version__", "load_config", "run"]
