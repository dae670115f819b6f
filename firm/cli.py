"""The `firm` command line: `firm train [--config FILE] [key=value ...]`, `firm config ...`.

User errors (bad config, bad prompt file, unusable run directory, a broken objective) print one
line `firm: error: ...` and exit with status 2 (input) or 1 (during the run); no traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

from firm.config import Config, ConfigError, config_to_toml, field_help
from firm.validation import load_config
from firm.version import __version__

EPILOG_HEAD = "config keys (override any of them as key=value; lists as [a, b]):\n"
DEFAULT_ARMS = {"sweep": "firm,fedavg", "compare": "firm,fedavg,mgda,fmgda"}
"""--algorithms of `firm sweep` and `firm compare` when neither it nor --arm is given."""
CONFIG_HELP = "TOML or YAML config file, or the name of a packaged task (firm/tasks/, e.g. helpful-vs-concise)"


@functools.cache
def _keys_help() -> str:
    """Every config key with its type, default and meaning: the epilog of each subcommand's --help."""
    lines = [EPILOG_HEAD]
    for key, tname, default, doc in field_help():
        lines.append(f"  {key} ({tname}, default {default})\n      {doc}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="firm", description="Federated multi-objective alignment of language models.")
    parser.add_argument("--version", action="version", version=f"firm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser(
        "sweep",
        help="train each arm (algorithm variant) at evenly spaced preference vectors, once per seed (resumable); "
        "writes sweep.json with hypervolumes and their intervals over seeds",
        epilog=_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("--config", "-c", metavar="FILE", help=CONFIG_HELP)
    sweep.add_argument("--algorithms", help="comma-separated algorithms, each an arm (default without --arm: firm,fedavg)")
    sweep.add_argument("--divisions", type=int, default=4, help="simplex lattice step 1/D (M = 2: D + 1 points; default 4)")
    _arm_arguments(sweep)
    sweep.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides; output.name names the sweep (rerun it to resume)"
    )
    flower = sub.add_parser(
        "flower",
        help="a SuperLink and SuperNodes on this machine (up / down), or a SuperNode's warm ClientApp worker",
        description="Try the Flower engine on one machine: `firm flower up --nodes 2`, then `firm train engine=flower ...`, "
        "then `firm flower down`. See docs/deployment.md for real multi-machine runs.",
    )
    fsub = flower.add_subparsers(dest="flower_command", required=True)
    fup = fsub.add_parser("up", help="start a SuperLink and N SuperNodes (client ids 0..N-1) on loopback")
    fup.add_argument("--nodes", type=int, default=2, help="number of SuperNodes (default 2)")
    fup.add_argument("--superlink", default="127.0.0.1:8000", help="host:port of the SuperLink (default 127.0.0.1:8000)")
    fup.add_argument(
        "--tls", metavar="CERT_DIR", help="serve HTTPS and require SuperNode auth, with the files of scripts/make_test_certs.py"
    )
    fup.add_argument(
        "--insecure-non-loopback",
        action="store_true",
        help="allow a --superlink other than loopback without --tls (only if TLS is terminated outside Flower; "
        "see docs/deployment.md, TLS rule)",
    )
    fup.add_argument(
        "--prompt-file", action="append", default=[], metavar="JSONL", help="node i's own prompts (repeat per node, in order)"
    )
    fup.add_argument(
        "--per-message",
        action="store_true",
        help="Flower's own executor (a new ClientApp process per message) instead of the warm worker",
    )
    fup.add_argument(
        "--database",
        action="store_true",
        help="keep the SuperLink's state in DIR/superlink/state.db, so that it can restart under live SuperNodes "
        "(slower rounds; see docs/deployment.md, Resume on Flower)",
    )
    fdown = fsub.add_parser("down", help="stop exactly the processes `firm flower up` started")
    for p in (fup, fdown):
        p.add_argument("--dir", default=".firm-flower", help="state directory with pids and logs (default .firm-flower)")
    fworker = fsub.add_parser(
        "worker", help="serve a SuperNode's ClientApp tasks from one long-lived process (--isolation process)"
    )
    fworker.add_argument("--runtime-api-address", default="127.0.0.1:9094", help="the SuperNode's Runtime API (its --port)")
    fworker.add_argument("--root-certificates", default=None, help="CA of the Runtime API's TLS certificate")
    palette = sub.add_parser(
        "palette",
        help="solve MAP value targets on the clients' reference samples: lambda, feasibility, predicted values "
        "(optionally best-of-n decoding on held-out prompts); no training",
        epilog=_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    palette.add_argument("--config", "-c", metavar="FILE", help=CONFIG_HELP)
    palette.add_argument(
        "--targets",
        help='e.g. "harmlessness=0.9,helpfulness=+0.02,positiveness=q0.7" (absolute, +change over the reference mean, '
        "or reference quantile); default: palette.targets of the config",
    )
    palette.add_argument(
        "--best-of-n", type=int, default=0, metavar="N", help="also decode the held-out prompts by best-of-N under lambda"
    )
    palette.add_argument("--out", metavar="DIR", help="write palette.json and plots here (default runs/palette-<time>)")
    palette.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. palette.samples_per_prompt=8")
    from firm.rewards.cli import add_parser as add_reward_parser

    add_reward_parser(sub)
    report = sub.add_parser("report", help="write plots and report.html for a run directory and print its table")
    report.add_argument("run_dir", metavar="RUN_DIR")
    compare = sub.add_parser(
        "compare",
        help="run the chosen arms on one config (a resumable preference sweep over seeds, paired evaluation) and write "
        "comparison.html (means and 95%% intervals over seeds); "
        "or, given an existing SWEEP_DIR, just rewrite its comparison",
        epilog=_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("--config", "-c", metavar="FILE", help=CONFIG_HELP)
    compare.add_argument(
        "--algorithms", help="comma-separated algorithms, each an arm (default without --arm: firm,fedavg,mgda,fmgda)"
    )
    compare.add_argument("--divisions", type=int, default=2, help="preference grid step 1/D (default 2: three points for M = 2)")
    _arm_arguments(compare)
    compare.add_argument(
        "targets", nargs="*", metavar="SWEEP_DIR | key=value", help="an existing sweep directory, or dotted overrides"
    )
    for name, help_text in (
        ("train", "train one LoRA adapter across simulated clients and write a run directory"),
        ("config", "print the resolved config as TOML (defaults <- file <- overrides)"),
    ):
        p = sub.add_parser(
            name, help=help_text, description=help_text, epilog=_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("--config", "-c", metavar="FILE", help=CONFIG_HELP)
        p.add_argument(
            "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. federation.rounds=3 algorithm.reg=0.5"
        )
        if name == "train":
            p.add_argument(
                "--resume", metavar="RUN_DIR", help="continue an interrupted run from its latest checkpoint, with its own config"
            )
    return parser


def _arm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="LABEL:key=value,...",
        help="an algorithm variant, repeatable, e.g. fmgda-sgd:algorithm.name=fmgda,algorithm.optimizer=sgd,algorithm.lr=0.05",
    )
    parser.add_argument(
        "--seeds",
        metavar="S,S,...",
        help="run every point once per federation.seed, e.g. 0,1,2 (default: the config's); data.seed stays fixed",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args.run_dir)
    if args.command == "reward":
        from firm.rewards.cli import main as reward_main

        return reward_main(args)
    if args.command == "flower":
        return _flower(args)
    if args.command == "train" and args.resume:
        if args.config or args.overrides:
            print("firm: error: --resume uses the run's own config.toml; give no --config or overrides", file=sys.stderr)
            return 2
        return _train(None, args.resume)
    if args.command == "compare" and len(args.targets) == 1 and "=" not in args.targets[0] and args.config is None:
        if args.arm or args.seeds or args.algorithms:
            print("firm: error: give either SWEEP_DIR (rewrite its comparison) or the sweep to run, not both", file=sys.stderr)
            return 2
        return _compare(args.targets[0])
    if args.command == "compare":
        args.overrides = args.targets
    if args.command == "palette" and args.targets is not None:
        args.overrides = [*args.overrides, f"palette.targets={args.targets}"]
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(config_to_toml(config), end="")
        return 0
    if args.command == "sweep":
        return _sweep(config, args)
    if args.command == "palette":
        return _palette(config, args.best_of_n, args.out)
    if args.command == "compare":
        if not config.output.name:  # name the sweep once, so the comparison finds it
            import dataclasses

            from firm.rundir import default_run_name

            config = dataclasses.replace(config, output=dataclasses.replace(config.output, name=default_run_name("compare")))
        status = _sweep(config, args)
        if status != 0:
            return status
        from firm.sweep import sweep_dir

        return _compare(str(sweep_dir(config)))

    if config.engine.name == "flower":
        return _train_flower(config)
    return _train(config, None)


def _train(config: Config | None, resume_dir: str | None) -> int:
    """`firm train`: a new run of `config`, or (`resume_dir`) the continuation of an interrupted one."""
    import dataclasses
    from pathlib import Path

    from firm.checkpoint import CheckpointError
    from firm.data import PromptFileError
    from firm.launch import run
    from firm.objectives import ObjectiveError
    from firm.palette import PaletteInfeasible, PaletteSolveError
    from firm.policy import PolicyError
    from firm.robust import RoundFailed
    from firm.rundir import RunDirError, run_name
    from firm.train import resume

    if config is not None and not config.output.name:  # name the run now, so an interruption can say where it is
        name = run_name(config)
        if not (Path(config.output.dir) / name).exists():
            config = dataclasses.replace(config, output=dataclasses.replace(config.output, name=name))
    where = resume_dir or (
        str(Path(config.output.dir) / config.output.name) if config is not None and config.output.name else None
    )
    try:
        result = resume(resume_dir) if resume_dir is not None else run(config)  # type: ignore[arg-type]
    except (PromptFileError, RunDirError, PolicyError, CheckpointError, ConfigError) as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 2
    except PaletteInfeasible as err:
        print(f"firm: error: {err}; nothing was trained (see `firm palette` for the feasible region)", file=sys.stderr)
        return 2
    except PaletteSolveError as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 1
    except (ObjectiveError, RoundFailed) as err:
        print(f"firm: error: {err}", file=sys.stderr)
        if where:
            print(
                f"firm: completed rounds are checkpointed; fix the cause and run `firm train --resume {where}`", file=sys.stderr
            )
        return 1
    except KeyboardInterrupt:
        hint = f"; continue with `firm train --resume {where}`" if where else ""
        print(f"firm: interrupted; completed rounds are checkpointed{hint}", file=sys.stderr)
        return 130
    except RuntimeError as err:  # `--resume` of an engine=flower run: its Flower run did not complete
        from firm.engines.flower.submit import FlowerRunError  # flwr only where a Flower run was made

        if not isinstance(err, FlowerRunError):
            raise
        print(f"firm: error: {err}", file=sys.stderr)
        return 1
    from firm.report import report_table

    if result.summary.get("reference") == "local":  # one run per client: print the spread over clients
        for name, spread in result.summary["final_eval"].items():
            print(
                f"{name}: mean {spread['mean']:.4f} (std {spread['std']:.4f}, min {spread['min']:.4f}, max {spread['max']:.4f}) over clients"
            )
    else:
        print(report_table(result.run_dir))
    print(f"run directory: {result.run_dir}")
    if result.report is not None:
        print(f"report: {result.report}")
    return 0


def _train_flower(config: Config) -> int:
    from firm.engines.flower.submit import FlowerRunError, submit
    from firm.report import report_table

    try:
        run_dir = submit(config)
    except FlowerRunError as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("firm: stopped streaming; the run goes on on the SuperLink (`flwr stop` ends it)", file=sys.stderr)
        return 130
    if not (run_dir / "summary.json").exists():
        print(f"run directory (on the SuperLink's host): {run_dir}")
        return 0
    print(report_table(run_dir))
    print(f"run directory: {run_dir}")
    return 0


def _palette(config: Config, best_of_n: int, out: str | None) -> int:
    """`firm palette`: solve the targets, print the table, optionally decode best-of-n; exit 0 feasible, 1 infeasible."""
    from pathlib import Path

    from firm.data import PromptFileError, split_prompts
    from firm.objectives import ObjectiveError, resolve_objective
    from firm.palette import PaletteSolveError
    from firm.palette.output import decoding_table, solution_table, write_palette
    from firm.palette.sampling import best_of_n as decode_best_of_n
    from firm.palette.sampling import palette_record, solve_federated
    from firm.policy import PolicyError, build_policy
    from firm.rundir import default_run_name

    if not config.palette.targets:
        print(
            "firm: error: no targets: give --targets or palette.targets, e.g. harmlessness=0.9,helpfulness=0.5", file=sys.stderr
        )
        return 2
    if best_of_n < 0:
        print("firm: error: --best-of-n: must be >= 1 (0 = off)", file=sys.stderr)
        return 2
    fed = config.federation
    try:
        prompts = split_prompts(config)
        policy = build_policy(config.model, config.lora, fed.seed)
    except (PromptFileError, PolicyError) as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 2
    names = list(config.objectives.names)
    objectives = [(name, resolve_objective(name)) for name in names]
    try:
        solution, federation = solve_federated(policy, objectives, prompts.clients, config)
    except (ObjectiveError, PaletteSolveError) as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 1
    record = palette_record(solution, federation, config)
    print(solution_table(solution, federation, record, config))
    decoding = None
    if best_of_n:
        if not solution.feasible or solution.met_by_reference:
            print("best-of-n: skipped (needs a feasible palette with lambda != 0)")
        else:
            result = decode_best_of_n(policy, objectives, prompts.eval, solution.lam, best_of_n, config)
            decoding = result.to_dict(names)
            record["decoding"] = decoding
            print(decoding_table(solution, result))
    out_dir = Path(out) if out else Path(config.output.dir) / default_run_name("palette")
    record["objectives"] = names
    written = write_palette(out_dir, record, decoding)
    print("written: " + ", ".join(str(path) for path in written))
    return 0 if solution.feasible else 1


def _flower(args: argparse.Namespace) -> int:
    from firm.engines.flower import local

    if args.flower_command == "worker":
        from firm.engines.flower.worker import main as worker_main

        argv = ["--runtime-api-address", args.runtime_api_address]
        if args.root_certificates:
            argv += ["--root-certificates", args.root_certificates]
        return worker_main(argv)
    try:
        if args.flower_command == "up":
            if args.nodes < 1:
                print("firm: error: --nodes: must be >= 1", file=sys.stderr)
                return 2
            cluster = local.up(
                args.dir,
                args.nodes,
                args.superlink,
                warm=not args.per_message,
                tls=args.tls,
                insecure_non_loopback=args.insecure_non_loopback,
                prompt_files=args.prompt_file,
                database=args.database,
            )
            for p in cluster.processes:
                print(f"{p.role:<12s} pid {p.pid:<8d} log {p.log}")
            tls = f" engine.root_certificates={cluster.root_certificates}" if cluster.root_certificates else ""
            print(
                f"SuperLink at {cluster.superlink}; now run: firm train engine=flower engine.superlink={cluster.superlink}"
                f" federation.num_clients={args.nodes}{tls}"
            )
            return 0
        stopped = local.down(args.dir)
        print(f"stopped {len(stopped)} processes: " + ", ".join(f"{p.role} ({p.pid})" for p in stopped))
        return 0
    except local.PlaintextRefused as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 2
    except local.ClusterError as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 1


def _sweep(config: Config, args: argparse.Namespace) -> int:
    from firm.sweep import Arm, parse_seeds, sweep, sweep_table

    if args.divisions < 1:
        print("firm: error: --divisions: must be >= 1", file=sys.stderr)
        return 2
    try:
        names = args.algorithms if args.algorithms is not None or args.arm else DEFAULT_ARMS[args.command]
        arms = [Arm.of(a.strip()) for a in (names or "").split(",") if a.strip()] + [Arm.parse(a) for a in args.arm]
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        result = sweep(config, arms, args.divisions, seeds)
    except ConfigError as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("firm: interrupted; finished points are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    print(sweep_table(result))
    print(f"sweep directory: {result['path']}")
    return 0


def _report(run_dir: str) -> int:
    from firm.report import ReportError, report_table, write_report

    try:
        path = write_report(run_dir)
    except ReportError as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 2
    print(report_table(run_dir))
    print(f"report: {path}")
    return 0


def _compare(sweep_dir: str) -> int:
    from firm.report import ReportError, comparison_table, write_comparison

    try:
        path = write_comparison(sweep_dir)
    except ReportError as err:
        print(f"firm: error: {err}", file=sys.stderr)
        return 2
    print(comparison_table(sweep_dir))
    print(f"comparison: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
