"""Validation: every check of a config's values, called from one place, and `load_config`.

`firm.config` is the schema and its converters, with no project imports; a check that needs
another module's knowledge (which objectives exist, what an algorithm accepts, whether the
data files parse) lives in that module, and `validate` calls them all. The CLI, `firm.run`,
sweeps and references validate through here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from firm import algorithms, compression, data, objectives, palette, policy, robust, transport
from firm.config import Config, ConfigError, read_config
from firm.privacy import wrap as privacy
from firm.tasks import resolve_config_path


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *, upgrade: bool = False) -> Config:
    """Defaults <- file (TOML or YAML) <- `key=value` overrides, then type checks and validation
    (`upgrade`: a run's own config.toml, renamed keys read under their new names: `read_config`).
    `path` may name a packaged task (`firm.tasks`) instead of a file."""
    if path is not None:
        try:
            path = resolve_config_path(path)
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None
    config = read_config(path, overrides, upgrade=upgrade)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Every check of a config's values, in one place; raises ConfigError naming the key.

    The checks that need another module's knowledge are that module's (`validate_config`):
    objectives, algorithms, aggregation (firm.robust), the engine's transport, the palette,
    compression, the device (firm.policy) and the data; the field ranges are here. Then the
    settings that act in only some rounds are warned about, once per process.
    """
    objectives.validate_config(config)
    algorithms.validate_config(config)
    fed = config.federation
    if fed.clients_per_round > fed.num_clients:
        raise ConfigError(
            f"federation.clients_per_round: {fed.clients_per_round} is more than federation.num_clients = {fed.num_clients}"
        )
    positive = {
        "lora.r": config.lora.r,
        "rollout.prompts_per_step": config.rollout.prompts_per_step,
        "rollout.samples_per_prompt": config.rollout.samples_per_prompt,
        "rollout.max_new_tokens": config.rollout.max_new_tokens,
        "rollout.temperature": config.rollout.temperature,
        "algorithm.local_steps": config.algorithm.local_steps,
        "algorithm.inner_epochs": config.algorithm.inner_epochs,
        "algorithm.lr": config.algorithm.lr,
        "algorithm.server_lr": config.algorithm.server_lr,
        "algorithm.advantage_eps": config.algorithm.advantage_eps,
        "federation.num_clients": fed.num_clients,
        "federation.clients_per_round": fed.clients_per_round,
        "federation.rounds": fed.rounds,
        "eval.num_prompts": config.eval.num_prompts,
        "eval.samples_per_prompt": config.eval.samples_per_prompt,
        "eval.every": config.eval.every,
        "output.checkpoint_every": config.output.checkpoint_every,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    agg = config.aggregation
    non_negative = {
        "lora.dropout": config.lora.dropout,
        "algorithm.reg": config.algorithm.reg,
        "algorithm.beta_kl": config.algorithm.beta_kl,
        "algorithm.clip_eps": config.algorithm.clip_eps,
        "federation.seed": fed.seed,
        "federation.min_clients": fed.min_clients,
        "federation.client_timeout": fed.client_timeout,
        "federation.round_retries": fed.round_retries,
        "aggregation.clip_norm": agg.clip_norm,
        "aggregation.max_norm_ratio": agg.max_norm_ratio,
    }
    if fed.min_clients > fed.clients_per_round:
        raise ConfigError(
            f"federation.min_clients: {fed.min_clients} is more than federation.clients_per_round = {fed.clients_per_round}"
        )
    robust.validate_config(config)
    privacy.validate_config(config)
    transport.validate_engine(config.engine)
    transport.validate_secure_aggregation(config)
    for key, value in non_negative.items():
        if not value >= 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    palette.validate_config(config)
    compression.validate_config(config.compression)
    if config.rollout.samples_per_prompt < 2:
        raise ConfigError("rollout.samples_per_prompt: must be >= 2 (group-relative advantages need a group)")
    if not config.lora.target_modules:
        raise ConfigError("lora.target_modules: at least one module name is required")
    if not config.lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout: must be in [0, 1), got {config.lora.dropout}")
    policy.validate_model(config.model)
    data.validate_config(config)
    for message in robust.config_warnings(config):
        _warn_once(message)


_WARNED: set[str] = set()
"""The warnings this process has printed: each once, however often a config is validated (sweeps, the Flower ServerApp)."""


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"firm: warning: {message}", file=sys.stderr)
