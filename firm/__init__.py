"""FIRM: federated multi-objective alignment of language models with one LoRA adapter per round."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from firm.config import Config
    from firm.train import RunResult


def run(config: Config) -> RunResult:
    """Train with `config` and return the run's result (see `firm.train.run`)."""
    from firm.train import run as _run

    return _run(config)


def __getattr__(name: str) -> Any:
    # Config helpers are light; keep `import firm` from importing torch until needed.
    if name in ("Config", "load_config", "ConfigError"):
        from firm import config

        return getattr(config, name)
    raise AttributeError(name)


__all__ = ["Config", "ConfigError", "__version__", "load_config", "run"]
