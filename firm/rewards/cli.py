"""`firm reward train [--config FILE] [key=value ...]` and `firm reward train --resume RUN_DIR`.

With `train.engine=flower` the run is submitted to the Flower SuperLink at `train.superlink`
(firm.rewards.flower, docs/rewards/flower.md), a new run and a resumed one alike.

Bad input (a config key, a value, an unusable run directory) prints one line `firm: error: ...`
and exits 2; the run's progress goes to stderr, the run directory's path to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from firm.config import ConfigError
from firm.rewards.config import RewardConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `reward` subcommand and its own subcommands."""
    reward = sub.add_parser("reward", help="learn a reward from human ratings: a federated preference predictor (PluralLLM)")
    rsub = reward.add_subparsers(dest="reward_command", required=True)
    train = rsub.add_parser(
        "train",
        help="train the predictor (federated, centralized or local) and write a run directory with model/",
        description="Keys: data.* (attribute, min_conversations, min_turns, unseen_groups, test_fraction, holdout=test|validation, seed), model.* (kind=gpo|regression, "
        "d_model, layers, heads, hidden, context, queries), train.* (mode=federated|centralized|local, rounds, clients_per_round, "
        "local_epochs, lr, server=fedavg|fedavgm|fedadam|fedadagrad, server_lr, seed, device, engine=inprocess|flower, superlink, "
        "root_certificates, round_timeout), output.* (dir, name); "
        "their meanings are in firm/rewards/config.py and docs/algorithms/plural-rewards.md.",
    )
    train.add_argument("--config", "-c", metavar="FILE", help="TOML or YAML reward config file")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its latest checkpoint")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.server=fedadam")


def main(args: argparse.Namespace) -> int:
    from firm.checkpoint import CheckpointError
    from firm.rewards.config import load_reward_config
    from firm.rewards.train import resume_run, run

    try:
        if args.resume:
            if args.config or args.overrides:
                raise ConfigError("--resume uses the run's own config.toml; give no --config or overrides")
            resume = Path(args.resume)
            config = load_reward_config(resume / "config.toml")
            path = _submit(config, resume) if config.train.engine == "flower" else resume_run(resume)
        else:
            config = load_reward_config(args.config, args.overrides)
            path = _submit(config, None) if config.train.engine == "flower" else run(config)
    except (ConfigError, CheckpointError, ModuleNotFoundError) as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a train.engine=flower run that did not complete
        from firm.engines.flower.submit import FlowerRunError  # flwr only where a Flower run was made

        if not isinstance(err, FlowerRunError):
            raise
        print(f"firm: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("firm: interrupted; continue with `firm reward train --resume <run dir>`", file=sys.stderr)
        return 130
    print(path)
    return 0


def _submit(config: RewardConfig, resume: Path | None) -> Path:
    """`train.engine=flower`: the run on the SuperLink (flwr is imported only here)."""
    from firm.rewards.flower import submit

    return submit(config, resume_from=resume)
