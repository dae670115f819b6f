"""The config of a reward-learning run (`firm reward train`): typed frozen sections, loaded like a policy run's.

Defaults <- TOML/YAML file <- `key=value` overrides, with the keys and types checked by the same
converter as `firm.config` (one-line `ConfigError`s naming the dotted key); `validate` checks the
values. Sections: `data` (which ratings, which groups), `model` (`firm.rewards.predictor.PredictorSpec`),
`train` (federation, local and server optimisers), `output`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from firm.config_io import ConfigError, apply_override, build_dataclass, read_config_file


@dataclass(frozen=True)
class RewardDataConfig:
    source: Literal["chitchat"] = "chitchat"
    """Where the ratings come from: `chitchat` (chitchat-dataset's 1-10 post-conversation ratings)."""
    attribute: Literal["witty", "upbeat", "interesting", "mean"] = "interesting"
    """Which rating the predictor learns (`mean`: the mean of the three, rounded)."""
    min_conversations: int = 20
    """A participant with at least this many rated conversations is a group (a client)."""
    unseen_groups: int = 10
    """Groups held out of training entirely: the alignment score on them is the generalisation view."""
    test_fraction: float = 0.25
    """Of each seen group's items, the fraction held out for evaluation."""
    min_turns: int = 2
    """Conversations with fewer turns are dropped. The default 2 drops the one-sided ones (the opener wrote, nobody
    answered; 76 % of their ratings are exactly 5): a learned reward scores (prompt, reply) pairs, which always have a
    reply, so "no reply -> 5" is a shortcut that never applies where the predictor is used (docs/rewards/data.md)."""
    max_chars: int = 1000
    """A conversation's text is cut to this many characters before it is embedded."""
    holdout: Literal["test", "validation"] = "test"
    """What the run is evaluated on: `test` (seen groups' test items and the unseen groups) or `validation`, for
    tuning: each seen group's training items split again (`test_fraction` of them held out), unseen groups
    left out, so no test item is ever seen (firm.rewards.ratings.validation_split)."""
    seed: int = 0
    """Seed of the unseen-group choice and the train/test split (apart from `train.seed`, as `data.seed` in a policy run)."""


@dataclass(frozen=True)
class RewardModelConfig:
    kind: Literal["gpo", "regression"] = "gpo"
    """`gpo`: a transformer over a group's (embedding, rating) context pairs; `regression`: an MLP on the embedding alone."""
    d_model: int = 128
    """GPO: the transformer's width."""
    layers: int = 2
    """GPO: transformer layers."""
    heads: int = 4
    """GPO: attention heads."""
    hidden: int = 128
    """Regression: the hidden width (0 = linear in the embedding)."""
    dropout: float = 0.0
    """Dropout inside the predictor during training."""
    context: int = 16
    """GPO: context pairs (a group's own rated examples) per episode, in training and when scoring."""
    queries: int = 16
    """Query items per training episode (GPO) or per group in a batch (regression)."""


@dataclass(frozen=True)
class RewardTrainConfig:
    mode: Literal["federated", "centralized", "local"] = "federated"
    """`federated`: FedAvg-style rounds across groups; `centralized`: one model on the pooled items (the reference);
    `local`: every group trains its own model on its own items (no sharing)."""
    rounds: int = 30
    """Federated rounds; centralized and local runs take the same number of epochs-equivalents (see docs)."""
    clients_per_round: int = 10
    """Groups sampled uniformly without replacement each round (all of them when larger than their number)."""
    local_epochs: float = 1.0
    """Passes over a client's training items per round (the number of local steps = epochs x items / (episodes x queries))."""
    episodes_per_step: int = 4
    """Episodes (one group's context + queries) per local optimiser step."""
    lr: float = 1e-3
    """The clients' (and the centralized run's) Adam learning rate."""
    weight_decay: float = 0.0
    """The clients' AdamW weight decay."""
    server: Literal["fedavg", "fedavgm", "fedadam", "fedadagrad"] = "fedavg"
    """Server update (Reddi et al. 2021): `fedavg` = the sample-weighted mean; `fedavgm` with momentum;
    `fedadam`/`fedadagrad` adaptive, on the pseudo-gradient (global - mean of the clients' models)."""
    server_lr: float = 1.0
    """The server optimiser's learning rate (1.0 with `fedavg` is exactly the weighted mean)."""
    server_momentum: float = 0.9
    """`fedavgm`: the server's momentum; `fedadam`: beta1."""
    server_beta2: float = 0.99
    """`fedadam`: beta2."""
    server_tau: float = 1e-3
    """`fedadam`/`fedadagrad`: the adaptivity tau (the epsilon of Reddi et al.)."""
    target_alignment: float = 0.0
    """Convergence speed: the first round (and samples seen) at which the seen groups' mean alignment reaches this
    (0 = the centralized reference's best is not known yet; the comparison benchmark sets it)."""
    eval_every: int = 1
    """Evaluate every this many rounds (and always after the last)."""
    checkpoint_every: int = 1
    """Write a resumable checkpoint every this many rounds (0 = never)."""
    seed: int = 0
    """Seed of model initialisation, client sampling and episode draws."""
    device: str = "auto"
    """`auto` (CUDA if available, else CPU), `cpu`, `cuda`, `cuda:N`."""
    engine: Literal["inprocess", "flower"] = "inprocess"
    """Where a federated run's clients train: `inprocess` (one after another in this process) or `flower` (a run
    submitted to the Flower SuperLink at `train.superlink`, one SuperNode per group: docs/rewards/flower.md)."""
    superlink: str = "127.0.0.1:8000"
    """`flower`: host:port of the SuperLink (as the policy's `engine.superlink`)."""
    root_certificates: str = ""
    """`flower`: PEM file of the CA of the SuperLink's TLS certificate; empty = plaintext, allowed on loopback only
    (the TLS rule of docs/deployment.md)."""
    round_timeout: float = 600.0
    """`flower`: seconds the server waits for a round's replies (and for the SuperNodes of its groups to connect);
    a group still missing then fails the round (no client is dropped)."""


@dataclass(frozen=True)
class RewardOutputConfig:
    dir: str = "runs"
    """Parent directory of run directories."""
    name: str = ""
    """Run directory name (default: `reward-<mode>-<timestamp>`)."""


@dataclass(frozen=True)
class RewardConfig:
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    train: RewardTrainConfig = field(default_factory=RewardTrainConfig)
    output: RewardOutputConfig = field(default_factory=RewardOutputConfig)


def reward_config_from_dict(data: Mapping[str, Any]) -> RewardConfig:
    """Keys and types checked (`ConfigError`); values by `validate`."""
    return typing.cast(RewardConfig, build_dataclass(RewardConfig, data, ""))


def reward_config_to_dict(config: RewardConfig) -> dict[str, Any]:
    """Nested plain data that `reward_config_from_dict` maps back to the same config."""
    return dataclasses.asdict(config)


def load_reward_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RewardConfig:
    """Defaults <- file <- `key=value` overrides, then `validate`."""
    data: dict[str, Any] = read_config_file(Path(path)) if path is not None else {}
    for text in overrides:
        apply_override(data, text)
    config = reward_config_from_dict(data)
    validate(config)
    return config


def validate(config: RewardConfig) -> None:
    """Value checks, one `ConfigError` line each."""
    d, m, t = config.data, config.model, config.train
    checks: list[tuple[bool, str]] = [
        (d.min_conversations >= 2, "data.min_conversations must be >= 2 (a group needs a train and a test item)"),
        (d.unseen_groups >= 0, "data.unseen_groups must be >= 0"),
        (0.0 < d.test_fraction < 1.0, "data.test_fraction must be in (0, 1)"),
        (d.min_turns >= 1, "data.min_turns must be >= 1"),
        (d.max_chars >= 16, "data.max_chars must be >= 16"),
        (m.d_model >= 1 and m.layers >= 1 and m.heads >= 1, "model.d_model, model.layers and model.heads must be >= 1"),
        (m.d_model % m.heads == 0, f"model.d_model ({m.d_model}) must be divisible by model.heads ({m.heads})"),
        (m.hidden >= 0, "model.hidden must be >= 0 (0 = linear)"),
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (m.context >= 0 and m.queries >= 1, "model.context must be >= 0 and model.queries >= 1"),
        (t.rounds >= 1, "train.rounds must be >= 1"),
        (t.clients_per_round >= 1, "train.clients_per_round must be >= 1"),
        (t.local_epochs > 0, "train.local_epochs must be > 0"),
        (t.episodes_per_step >= 1, "train.episodes_per_step must be >= 1"),
        (t.lr > 0 and t.server_lr > 0, "train.lr and train.server_lr must be > 0"),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (
            0.0 <= t.server_momentum < 1.0 and 0.0 <= t.server_beta2 < 1.0,
            "train.server_momentum and train.server_beta2 must be in [0, 1)",
        ),
        (t.server_tau > 0, "train.server_tau must be > 0"),
        (0.0 <= t.target_alignment <= 1.0, "train.target_alignment must be in [0, 1]"),
        (t.eval_every >= 1 and t.checkpoint_every >= 0, "train.eval_every must be >= 1 and train.checkpoint_every >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if t.device != "auto" and not (t.device == "cpu" or t.device == "cuda" or t.device.startswith("cuda:")):
        raise ConfigError(f"train.device: got {t.device!r}, allowed: auto, cpu, cuda, cuda:N")
    if not t.round_timeout > 0:
        raise ConfigError(f"train.round_timeout: must be > 0 seconds, got {t.round_timeout}")
    if t.engine == "flower":
        from firm.transport import check_address, is_loopback_address

        if t.mode != "federated":
            raise ConfigError(f"train.engine=flower runs federated rounds; train.mode={t.mode} runs in process only")
        check_address("train.superlink", t.superlink)
        if not t.root_certificates and not is_loopback_address(t.superlink):  # the TLS rule of docs/deployment.md
            raise ConfigError(
                f"train.superlink: {t.superlink} is not a loopback address and train.root_certificates is empty, so the "
                "run would travel in plaintext; set train.root_certificates to the CA file of the SuperLink's TLS certificate"
            )
        if t.root_certificates and not Path(t.root_certificates).is_file():
            raise ConfigError(f"train.root_certificates: file not found: {t.root_certificates}")
