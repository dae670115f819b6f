"""`firm.run(config)`: one federated training run, written out top to bottom.

build policy, objectives, data, algorithm -> evaluate the initial adapter -> for each round:
engine round (clients' local steps, uploads, aggregation) -> evaluate -> metrics row ->
checkpoint -> final adapter and summary. `firm train` is this function behind the CLI.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from firm import checkpoint
from firm.aggregation import weights_drift
from firm.algorithms import Algorithm
from firm.algorithms.protocol import ServerState
from firm.atomic import deferred_interrupt
from firm.codec import Adapter, encode
from firm.config import REFERENCES, Config, ConfigError, LoraConfig, ModelConfig
from firm.data import FederatedPrompts, Prompt, data_seed, split_prompts
from firm.engines.inprocess import InProcessEngine
from firm.engines.server import RoundOutcome
from firm.evaluation import Evaluation, base_vs_final_samples, evaluate
from firm.objectives import Objective, display_name, resolve_objective
from firm.policy import Policy, build_policy
from firm.privacy.ledger import PrivacyLedger
from firm.privacy.wrap import build_algorithm
from firm.robust import RoundFailed
from firm.rundir import RunDir, RunDirError
from firm.validation import load_config, validate
from firm.version import __version__

if TYPE_CHECKING:
    from firm.palette import Federation, PaletteSolution

NUM_SAMPLES = 4
"""Held-out prompts whose base and final completions go into samples.jsonl and the report."""


@dataclass
class RunResult:
    """What `run` returns: where everything was written, and the figures in memory."""

    run_dir: Path
    final_adapter: Adapter
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None  # report.html, if it was written


def _mean_train_rewards(steps: dict[int, list[dict[str, Any]]], names: list[str]) -> dict[str, float]:
    rows = [s["reward"] for client_steps in steps.values() for s in client_steps if "reward" in s]
    if not rows:
        return {}
    return {name: sum(r[m] for r in rows) / len(rows) for m, name in enumerate(names)}


_MODELS: dict[tuple[ModelConfig, LoraConfig, int], tuple[Policy, Adapter]] = {}
"""Policies kept for `reuse_model=True` runs in this process, with their freshly initialised adapter."""

_BASE_EVALS: dict[tuple[Any, ...], Evaluation] = {}
"""Round-0 held-out evaluations of those policies' fresh adapters: every run of a sweep with one seed
has the same one (same policy, prompts and sampling seeds), so it is taken once (see `run`)."""


def release_models() -> None:
    """Forget the kept policies and their round-0 evaluations (a sweep moving on to its next seed)."""
    _MODELS.clear()
    _BASE_EVALS.clear()


def _policy(config: Config, reuse_model: bool) -> Policy:
    """Build the policy, or (reuse_model) take this process's copy and reset its adapter to the fresh init."""
    key = (config.model, config.lora, config.federation.seed)
    if reuse_model and key in _MODELS:
        policy, initial = _MODELS[key]
        policy.set_adapter(initial)
        return policy
    policy = build_policy(config.model, config.lora, config.federation.seed)
    print(f"firm: compute dtype {policy.precision.name} ({policy.precision.reason})", file=sys.stderr)
    if reuse_model:
        _MODELS[key] = (policy, policy.get_adapter())
    return policy


class Engine(Protocol):
    """What the run loop needs of an engine (firm.engines.inprocess, firm.engines.flower)."""

    client_states: dict[int, dict[str, Any]]

    def run_round(
        self, round_idx: int, global_adapter: Adapter, server_state: ServerState, on_client_done: Any = None
    ) -> RoundOutcome: ...


EngineFactory = Callable[[Policy, Algorithm, Sequence[tuple[str, Objective]], FederatedPrompts, Config, bool], Engine]
"""(policy, algorithm, objectives, prompts, config, communicate) -> engine; the in-process engine by default."""

PaletteSolve = Callable[[Config], "tuple[PaletteSolution, Federation]"]
"""config -> the palette's solution and the Federation it asked (firm.palette.sampling.solve_federated in process)."""


def _inprocess(
    policy: Policy,
    algorithm: Algorithm,
    objectives: Sequence[tuple[str, Objective]],
    prompts: FederatedPrompts,
    config: Config,
    communicate: bool,
) -> Engine:
    return InProcessEngine(policy, algorithm, objectives, prompts.clients, config, communicate)


def run(
    config: Config,
    *,
    reuse_model: bool = False,
    prompts: FederatedPrompts | None = None,
    communicate: bool = True,
    engine: EngineFactory | None = None,
    palette_solve: PaletteSolve | None = None,
    resume_from: Path | None = None,
) -> RunResult:
    """Train one LoRA adapter with `config.algorithm` across simulated clients; see the README for outputs.

    `reuse_model=True` keeps the base model in memory between calls in one process (sweeps): a
    later run with the same model, LoRA and seed starts from the identical fresh adapter, so its
    results equal those of a run in a new process. `prompts` replaces the config's partition and
    `communicate=False` counts no bytes: both are for the non-federated references (firm.references).
    `engine` builds the engine that runs the clients' side of each round (the Flower ServerApp
    passes one that sends the round to SuperNodes); everything else in the run is the same.
    `palette_solve` solves `palette.targets` from the clients' reward samples (the Flower ServerApp
    passes one that asks the SuperNodes; default: the in-process clients sample their shards).
    `resume_from` continues the run directory from its latest checkpoint (see `resume`).
    """
    if config.algorithm.name in REFERENCES:
        raise ConfigError(
            f"algorithm.name: {config.algorithm.name!r} is a non-federated reference, run by firm.run / `firm train` "
            "(firm.launch.run), not by firm.train.run"
        )
    validate(config)
    start = time.perf_counter()
    fed, ev = config.federation, config.eval
    names = list(config.objectives.names)
    objectives = [(name, resolve_objective(name)) for name in names]
    if prompts is None:
        prompts = split_prompts(config)
    policy = _policy(config, reuse_model)
    palette: dict[str, Any] | None = None
    if config.palette.targets:  # MAP targets -> the preference every algorithm trains with
        palette, config = _palette(config, policy, objectives, prompts, resume_from, palette_solve)
    algorithm = build_algorithm(config)
    ledger = PrivacyLedger(config) if config.privacy.mode != "off" else None
    rounds = (engine or _inprocess)(policy, algorithm, objectives, prompts, config, communicate)
    global_adapter = policy.get_adapter()
    first_round, ckpt = 1, None
    metrics: list[dict[str, Any]] = []
    if resume_from is None:
        run_dir = RunDir(config, __version__)
    else:
        if (resume_from / "checkpoints").is_dir() and any((resume_from / "checkpoints").glob("round_*")):
            ckpt = checkpoint.load(checkpoint.latest(resume_from))
            checkpoint.check_matches(ckpt, global_adapter, algorithm.name, fed.seed, fed.rounds)
        # No checkpoint yet (stopped during round 1): start over in the same directory.
        run_dir, metrics = RunDir.reopen(resume_from, ckpt.round if ckpt else 0)
        if ckpt is not None:
            first_round, global_adapter = ckpt.round + 1, ckpt.global_adapter
            policy.set_adapter(global_adapter)
            rounds.client_states.update({int(k): v for k, v in ckpt.state.get("client_states", {}).items()})
            if ledger is not None:
                ledger.load_state_dict(ckpt.state["privacy"])

    def run_eval() -> Evaluation:
        ro = config.rollout
        return evaluate(
            policy, objectives, prompts.eval, ev.samples_per_prompt, ro.max_new_tokens, ro.temperature, data_seed(config)
        )

    summary: dict[str, Any] = {
        "firm_version": __version__,
        "algorithm": config.algorithm.name,
        "model": config.model.name,
        "objectives": names,
        "preference": list(config.objectives.preference_vector),
        "device": str(policy.device),
        "compute_dtype": policy.precision.as_dict(),
        "adapter_parameters": sum(t.numel() for t in global_adapter.values()),
        "adapter_bytes": len(encode(global_adapter)),
        "status": "running",
    }
    if ckpt is not None:
        summary["resumed_from_round"] = ckpt.round
    if palette is not None:
        summary["palette"] = {k: v for k, v in palette.items() if k != "region"}
        if resume_from is None:
            run_dir.write_json("palette.json", palette)

    def save_checkpoint(
        round_idx: int, adapter: Adapter, client_states: dict[int, dict[str, Any]], server_state: dict[str, Any]
    ) -> None:
        state = {
            "round": round_idx,
            "algorithm": algorithm.name,
            "seed": fed.seed,
            "initial_eval": summary["initial_eval"],
            "initial_eval_se": summary.get("initial_eval_se"),
            "initial_eval_prompt_means": summary.get("initial_eval_prompt_means"),
            "initial_kl": summary["initial_kl"],
            "client_states": {str(k): v for k, v in client_states.items()},
            "server_state": server_state,
            **({"privacy": ledger_state} if ledger is not None else {}),
        }
        run_dir.write_checkpoint(round_idx, partial(_save, policy, adapter), adapter, state)

    progress = _progress(config, done=len(metrics) * fed.clients_per_round)
    last_saved = first_round - 1
    # The last completed round's adapter, client states and server state (FedCMOO's warm start):
    # a round's results replace them only once its metrics row is written, so an interruption in
    # the round (its evaluation included) checkpoints, resumes and retries from a consistent state.
    client_states = copy.deepcopy(rounds.client_states)
    server_state: ServerState = dict(ckpt.state.get("server_state", {})) if ckpt is not None else {}
    ledger_state = ledger.state_dict() if ledger is not None else {}  # the ledger after the last completed round
    stopped: str | None = None
    try:
        if ckpt is not None and ckpt.state.get("initial_eval") is not None:
            initial_eval, initial_kl = ckpt.state["initial_eval"], ckpt.state["initial_kl"]
            initial_se = ckpt.state.get("initial_eval_se")  # None in a checkpoint of an older firm
            initial_prompts = ckpt.state.get("initial_eval_prompt_means")
        else:
            # the fresh adapter of a kept policy: its round-0 evaluation is the same in every run that shares it
            base_key = (config.model, config.lora, fed.seed, tuple(p.text for p in prompts.eval), ev.samples_per_prompt,
                        config.rollout, data_seed(config), tuple(names))  # fmt: skip
            base = _BASE_EVALS.get(base_key) if reuse_model else None
            if base is None:
                base = run_eval()
                if reuse_model:
                    _BASE_EVALS[base_key] = base
            initial_eval, initial_se, initial_kl, initial_prompts = base.means, base.stderr, base.kl, base.prompt_means
        summary.update(
            initial_eval=initial_eval,
            initial_eval_se=initial_se,
            initial_kl=initial_kl,
            initial_eval_prompt_means=initial_prompts,
        )
        for round_idx in range(first_round, fed.rounds + 1):
            if ledger is not None and (stopped := ledger.stop_reason(round_idx)) is not None:
                print(f"firm: {stopped}; stopping before it", file=sys.stderr)
                break
            progress.set_description(f"round {round_idx}/{fed.rounds}")
            round_start = time.perf_counter()
            for attempt in range(1, fed.round_retries + 2):
                try:
                    outcome = rounds.run_round(
                        round_idx, global_adapter, server_state, on_client_done=lambda _cid: progress.update(1)
                    )
                    break
                except RoundFailed as err:
                    # the failed attempt's client states are not kept: retry from the last completed round
                    _restore(rounds.client_states, client_states)
                    if attempt > fed.round_retries:
                        raise
                    print(f"firm: {err}; retrying the round ({attempt} of {fed.round_retries})", file=sys.stderr)
            eval_rewards: dict[str, float] | None = None
            eval_se: dict[str, float | None] | None = None
            eval_prompts: list[list[float]] | None = None
            kl: float | None = None
            times = dict(outcome.times)
            if round_idx % ev.every == 0 or round_idx == fed.rounds:
                eval_start = time.perf_counter()
                held_out = run_eval()
                eval_rewards, eval_se, kl, eval_prompts = held_out.means, held_out.stderr, held_out.kl, held_out.prompt_means
                times["eval"] = time.perf_counter() - eval_start
            times["round"] = time.perf_counter() - round_start
            weight_rows = list(outcome.weights.values())
            row: dict[str, Any] = {
                "round": round_idx,
                "clients": outcome.client_ids,
                "eval": eval_rewards,
                "eval_se": eval_se,
                "eval_prompt_means": eval_prompts,
                "kl": kl,
                "train": {"reward": _mean_train_rewards(outcome.steps, names)},
                "weights": {str(c): w for c, w in outcome.weights.items()},
                "drift": {"weights": weights_drift(weight_rows) if weight_rows else 0.0, "updates": outcome.drift_updates},
                "server": outcome.server,
                "dropped": {str(c): why for c, why in outcome.dropped.items()},
                "attempts": attempt,
                "comm": {"upload_bytes": outcome.upload_bytes, "download_bytes": outcome.download_bytes},
                "time_s": times,
                "local": {str(c): s for c, s in outcome.steps.items()},
            }
            if ledger is not None:
                row["privacy"] = ledger.record(sum(c not in outcome.dropped for c in outcome.client_ids))
            with deferred_interrupt():  # the row and the state it names: both or neither (a Ctrl-C waits)
                run_dir.append_metrics(row)
                metrics.append(row)
                # The round is complete only now: its results become the state to checkpoint and resume from.
                global_adapter = outcome.global_adapter
                client_states = copy.deepcopy(rounds.client_states)
                server_state = outcome.server_state
                ledger_state = ledger.state_dict() if ledger is not None else {}
            if round_idx % config.output.checkpoint_every == 0 or round_idx == fed.rounds:
                save_checkpoint(round_idx, global_adapter, client_states, server_state)
                last_saved = round_idx
            if eval_rewards is not None:
                shown = {display_name(k): f"{v:.3f}" for k, v in eval_rewards.items()}
                if ledger is not None:
                    shown["epsilon"] = f"{ledger.epsilon:.3g}"
                progress.set_postfix(shown)
        completed = metrics[-1]["round"] if metrics else 0
        if stopped is not None and completed > last_saved:  # the budget stop: the last released round is resumable
            save_checkpoint(completed, global_adapter, client_states, server_state)
            last_saved = completed
        final_dir = run_dir.write_final_adapter(partial(_save, policy, global_adapter))
        progress.set_description("samples")
        ro = config.rollout
        samples = base_vs_final_samples(
            policy, objectives, _sample_prompts(prompts.eval), ro.max_new_tokens, ro.temperature, data_seed(config)
        )
        run_dir.write_jsonl("samples.jsonl", samples)
        final = next((m for m in reversed(metrics) if m["eval"] is not None), None)
        if ledger is not None:
            summary["privacy"] = ledger.summary(config, stopped)
        summary.update(
            status="completed" if stopped is None else "stopped",
            rounds=completed,
            final_eval=final["eval"] if final else initial_eval,
            final_eval_se=final.get("eval_se") if final else initial_se,
            final_eval_prompt_means=final.get("eval_prompt_means") if final else initial_prompts,
            final_kl=final["kl"] if final else initial_kl,
            final_drift=metrics[-1]["drift"] if metrics else None,
            total_upload_bytes=sum(m["comm"]["upload_bytes"] for m in metrics),
            total_download_bytes=sum(m["comm"]["download_bytes"] for m in metrics),
            final_adapter=str(final_dir),
        )
    except BaseException as err:
        completed = metrics[-1]["round"] if metrics else 0
        if completed > last_saved and "initial_eval" in summary:
            # Ctrl-C or a failed round between checkpoints: keep the last completed round resumable
            try:
                save_checkpoint(completed, global_adapter, client_states, server_state)
            except Exception as save_err:  # never hide the error that ended the run
                print(f"firm: could not write the checkpoint of round {completed}: {save_err}", file=sys.stderr)
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        summary.update(status=status, error=f"{type(err).__name__}: {err}", rounds_completed=completed)
        raise
    finally:
        progress.close()
        summary["wall_time_s"] = time.perf_counter() - start
        try:
            run_dir.write_summary(summary)
        except OSError as err:  # never let a failed summary write hide the error that ended the run
            print(f"firm: could not write summary.json: {err}", file=sys.stderr)
    report = _write_report(run_dir.path) if config.output.report else None
    return RunResult(run_dir=run_dir.path, final_adapter=global_adapter, metrics=metrics, summary=summary, report=report)


def _restore(live: dict[Any, Any], saved: dict[Any, Any]) -> None:
    """Put `saved` (a deep copy kept by the loop) back into the live dict an engine or algorithm holds."""
    live.clear()
    live.update(copy.deepcopy(saved))


def _palette(
    config: Config,
    policy: Policy,
    objectives: Sequence[tuple[str, Objective]],
    prompts: FederatedPrompts,
    resume_from: Path | None,
    palette_solve: PaletteSolve | None = None,
) -> tuple[dict[str, Any], Config]:
    """Solve `palette.targets` from the clients' reference samples; return palette.json's content and the config
    with objectives.preference from lambda (`palette.weights`). Raises PaletteInfeasible before any training.

    On resume the run's palette.json is reused: its config.toml already holds the preference it trained with.
    """
    import dataclasses

    from firm.palette import PaletteInfeasible
    from firm.palette.sampling import palette_record, solve_federated

    if resume_from is not None and (resume_from / "palette.json").is_file():
        return json.loads((resume_from / "palette.json").read_text(encoding="utf-8")), config
    solve = palette_solve or partial(solve_federated, policy, objectives, prompts.clients)
    solution, federation = solve(config)
    if not solution.feasible:
        raise PaletteInfeasible(f"palette.targets {config.palette.targets!r}: {solution.reason}")
    record = palette_record(solution, federation, config)
    if solution.met_by_reference:
        record["note"] = "the reference already meets every target; training keeps objectives.preference"
        return record, config
    vector = solution.preference if config.palette.weights == "lambda" else solution.standardized_preference
    preference = tuple(float(v) for v in vector)
    if config.output.progress:
        shown = ", ".join(f"{n} {v:.3f}" for n, v in zip(solution.names, preference, strict=True))
        print(f"palette: feasible, KL {solution.kl:.4f}; training with preference {shown}", file=sys.stderr)
    objectives_cfg = dataclasses.replace(config.objectives, preference=preference)
    return record, dataclasses.replace(config, objectives=objectives_cfg)


def _sample_prompts(held_out: Sequence[Prompt]) -> list[Prompt]:
    """NUM_SAMPLES held-out prompts for samples.jsonl: half provocative when there are any, so both kinds show."""
    provocative = [p for p in held_out if p.provocative][: NUM_SAMPLES // 2]
    others = [p for p in held_out if not p.provocative][: NUM_SAMPLES - len(provocative)]
    chosen = provocative + others
    return chosen if len(chosen) == min(NUM_SAMPLES, len(held_out)) else list(held_out[:NUM_SAMPLES])


def _write_report(path: Path) -> Path | None:
    """Plots and report.html; a failure here is reported but never fails a finished run."""
    from firm.report import write_report

    try:
        return write_report(path)
    except Exception as err:  # the run's results are already safe on disk
        print(f"firm: could not write the report ({type(err).__name__}: {err}); run `firm report {path}`", file=sys.stderr)
        return None


def _save(policy: Policy, adapter: Adapter, directory: Path) -> None:
    policy.save_adapter(adapter, directory)


def _progress(config: Config, done: int = 0) -> Any:
    from tqdm.auto import tqdm

    fed = config.federation
    return tqdm(
        total=fed.rounds * fed.clients_per_round,
        initial=done,
        unit="client",
        disable=not config.output.progress,
        dynamic_ncols=True,
    )


def resume(run_dir: str | Path) -> RunResult:
    """Continue a run directory from its latest checkpoint, with the config it was started with.

    Raises RunDirError if the run already completed or its files are unusable, CheckpointError if
    the checkpoint is unreadable or does not match the config (the message says what differs).
    A run of `engine=flower` is submitted again to its SuperLink and resumed by the ServerApp
    there (firm.engines.flower.submit; FlowerRunError if that run does not complete); run this
    where the run directory is, the SuperLink's host.
    """
    path = Path(run_dir)
    if not (path / "config.toml").is_file():
        raise RunDirError(f"{path}: not a run directory (no config.toml)")
    summary_path = path / "summary.json"
    if summary_path.is_file():
        try:
            status = json.loads(summary_path.read_text(encoding="utf-8")).get("status")
        except json.JSONDecodeError:
            status = None
        if status == "completed":
            raise RunDirError(f"{path}: the run already completed; nothing to resume")
        if status == "stopped":
            raise RunDirError(f"{path}: the run stopped at its privacy budget (summary.json: privacy.stopped); nothing to resume")
    config = load_config(path / "config.toml", upgrade=True)  # a run of an older firm may hold renamed keys
    if config.engine.name == "flower":
        # A new Flower run whose ServerApp continues this directory (its clients' states are on their nodes).
        from firm.engines.flower.submit import submit

        return _read_result(submit(config, resume_from=path.absolute()))
    return run(config, resume_from=path)


def _read_result(run_dir: Path) -> RunResult:
    """The RunResult of a completed run directory that another process wrote (the Flower ServerApp)."""
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line]
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    final = checkpoint.load(checkpoint.latest(run_dir))  # the last round is always checkpointed
    report = run_dir / "report.html"
    return RunResult(run_dir, final.global_adapter, metrics, summary, report if report.is_file() else None)
