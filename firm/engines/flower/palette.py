"""Plumbing: the palette's federated statistics over Flower; the SuperNodes keep the reward samples, the server asks by Message.

In process, `firm.palette.federated.Federation` asks each client's `Samples` for the sums the MAP
dual needs (docs/palette.md, "Federated statistics"). On Flower the server does not hold the
clients' prompts (a site may serve its own prompt file), so the same questions travel as messages
of type `query.palette`, and the palette code itself (solver, Federation, merge) is unchanged:

- node side (`node_reply`, the ClientApp's `query.palette` handler): on its first question of a
  run, a node samples and scores its reference completions with `client_samples`, exactly as in
  process (same prompts, same seeds: the same samples), and keeps the rewards in its
  `context.state`. It answers every question from them: `sample` (how many samples it holds),
  `stats` (the `TiltStats` at lambda and centre), `count` (the weight at or below a threshold).
- server side (`solve_on_nodes`, which the ServerApp hands to `firm.train.run`): `NodeRounds`
  sends each question to every palette client at once, one round of messages, and gives each
  client's proxy (`NodeSamples`, a `RewardOracle`) its own answer. `Federation` asks its clients
  one after another, so the first proxy's question starts the round and the others take the
  answers already in. The answers are merged in client-id order, as in process, and float64
  travels exactly in a ConfigRecord, so lambda equals the in-process lambda.

What travels per round: the question (lambda and the centre, M + M float64; or a value index and
a threshold) to each node, and each node's answer (3 + M + M^2 float64, or one count), as one
ConfigRecord each way. `stat_upload_bytes` / `stat_download_bytes` count those records' serialised
bytes, the sampling round's included. Answers are screened (finite, the right shapes, totals that
match the node's sample count) and a client that stops answering ends the solve: a solve needs
the same clients' samples throughout.

Departures from the in-process palette:
- the M = 2 region plot is not drawn (`region_skipped` in palette.json says so): each statistics
  round is a message round trip, about 5 s on loopback with Flower 1.41 (a SuperNode with nothing
  to do polls the SuperLink every 3 s), and the region takes about 2,500 rounds; `firm palette`
  draws it;
- `federation.min_clients` (0 = all) is the fewest clients the palette may be solved on.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from firm.config import Config
from firm.data import Prompt
from firm.engines.flower.engine import FlowerEngine, send_and_receive
from firm.objectives import Objective
from firm.palette.dual import PaletteSolution, Samples, TiltStats, solve_palette
from firm.palette.federated import Federation
from firm.palette.sampling import client_samples
from firm.palette.targets import parse_targets
from firm.policy import Policy
from firm.robust import RoundFailed

MESSAGE_TYPE = "query.palette"
RECORD = "firm.palette"
"""The ConfigRecord that holds a question, and its answer."""
STATE = "firm.palette"
"""Prefix of the node's reward samples in `context.state`."""

REGION_SKIPPED = (
    "not drawn on Flower: each statistics round is a message round trip (about 5 s on loopback) and the region "
    "takes about 2,500 rounds; `firm palette` draws it in process"
)


# --------------------------------------------------------------------------- node side


class NodeRuntime(Protocol):
    """What a node has built for the run (firm.engines.flower.apps.runtime): the reference model, scorers, prompts."""

    policy: Policy
    objectives: list[tuple[str, Objective]]
    shard: Sequence[Prompt]


def node_reply(msg: Message, context: Context, client_id: int, config: Config, runtime: Callable[[], NodeRuntime]) -> Message:
    """Answer one palette question from this node's reward samples (sampled on the first question of the run)."""
    question = msg.content.config_records[RECORD]
    kind = str(question["question"])
    rewards = _node_rewards(context, client_id, config, runtime)  # [n, M], n = 0 for an empty shard
    answer: dict[str, Any]
    if kind == "sample":
        answer = {"num_samples": float(len(rewards))}
    elif len(rewards) == 0:
        raise ValueError(f"palette: client {client_id} holds no samples, yet was asked {kind!r}")
    elif kind == "stats":
        center = np.asarray(question["center"], dtype=np.float64) if "center" in question else None
        st = Samples(rewards).stats(np.asarray(question["lam"], dtype=np.float64), center)
        answer = {
            "total": st.total,
            "shift": st.shift,
            "sum_exp": st.sum_exp,
            "sum_r": [float(v) for v in st.sum_r],
            "sum_rr": [float(v) for v in st.sum_rr.ravel()],
        }
    elif kind == "count":
        value, threshold = question["value"], question["threshold"]
        if not (isinstance(value, int) and 0 <= value < rewards.shape[1] and isinstance(threshold, float)):
            raise ValueError(f"palette: a count question needs a value index and a threshold, got {value!r}, {threshold!r}")
        answer = {"count": Samples(rewards).count_at_most(value, threshold)}
    else:
        raise ValueError(f"palette: unknown question {kind!r}")
    return Message(RecordDict({RECORD: ConfigRecord(answer)}), reply_to=msg)


def _node_rewards(context: Context, client_id: int, config: Config, runtime: Callable[[], NodeRuntime]) -> np.ndarray:
    """This node's reward samples  # [n, M]: from `context.state`, or sampled now (once per run) and kept there."""
    pal, ro = config.palette, config.rollout
    prompt_file = str(context.node_config.get("prompt-file", ""))
    # everything the samples depend on: a state carried over from another config is not reused
    key = repr((client_id, prompt_file, config.model, config.objectives.names, config.data, config.federation.seed))
    key += repr((config.federation.num_clients, config.eval.num_prompts, pal.prompts_per_client, pal.samples_per_prompt))
    key += repr((ro.max_new_tokens, ro.temperature))
    if STATE + ".rewards" in context.state and context.state.config_records[STATE + ".key"]["key"] == key:
        return context.state.array_records[STATE + ".rewards"]["rewards"].numpy()
    rt = runtime()
    samples = client_samples(rt.policy, rt.objectives, rt.shard, client_id, config)
    rewards = np.zeros((0, len(config.objectives.names))) if samples is None else samples.rewards
    context.state[STATE + ".rewards"] = ArrayRecord({"rewards": Array(rewards)})
    context.state[STATE + ".key"] = ConfigRecord({"key": key})
    return rewards


def with_server_preference(config: Config, meta: ConfigRecord) -> Config:
    """The run-config with the preference a `train` message carries (FlowerEngine sends the server's).

    The run-config is fixed when the run is submitted; a palette solve sets objectives.preference
    later, on the server, so the clients learn it from each round's message.
    """
    if "preference" not in meta:
        return config
    value = meta["preference"]
    preference = tuple(float(v) for v in value) if isinstance(value, list) else ()
    if (
        len(preference) != config.num_objectives
        or not all(math.isfinite(v) and v >= 0 for v in preference)
        or sum(preference) <= 0
    ):
        raise ValueError(f"the server's preference {value!r} is not {config.num_objectives} finite weights >= 0")
    return dataclasses.replace(config, objectives=dataclasses.replace(config.objectives, preference=preference))


# --------------------------------------------------------------------------- server side


class NodeRounds:
    """The palette clients on their SuperNodes, asked one round of messages per question.

    `nodes` maps client id -> node id (FlowerEngine.discover_nodes). `sample()` asks every node to
    draw its samples and keeps the clients that hold some; `answer` serves the proxies.
    `rounds`, `upload_bytes` and `download_bytes` count every palette message, the sampling round's included.
    """

    def __init__(self, grid: Grid, config: Config, nodes: dict[int, int]) -> None:
        self.grid, self.config, self.nodes = grid, config, nodes
        self.num_samples: dict[int, float] = {}  # client id -> its sample count, from the sampling round
        self.rounds = self.upload_bytes = self.download_bytes = 0
        self._question: dict[str, Any] | None = None
        self._answers: dict[int, ConfigRecord] = {}

    def sample(self) -> list[int]:
        """Have every connected client sample its reference completions; the ids of those holding samples, sorted."""
        fed, pal = self.config.federation, self.config.palette
        answers, failed = self._ask({"question": "sample"}, sorted(self.nodes))
        failed.update({c: "no SuperNode holds this client id" for c in range(fed.num_clients) if c not in self.nodes})
        need = fed.min_clients or fed.num_clients
        if fed.num_clients - len(failed) < need:
            reasons = "; ".join(f"client {c}: {why}" for c, why in sorted(failed.items()))
            raise RoundFailed(
                f"palette: {fed.num_clients - len(failed)} of {fed.num_clients} clients drew reference samples, "
                f"federation.min_clients needs {need} ({reasons}); nothing was trained"
            )
        most = pal.prompts_per_client * pal.samples_per_prompt if pal.prompts_per_client > 0 else math.inf
        for client_id, answer in sorted(answers.items()):
            n = _number(answer, "num_samples")
            if not (0 <= n <= most and n % pal.samples_per_prompt == 0):
                raise RoundFailed(f"palette: client {client_id} claims {n:g} reference samples, not a count this config allows")
            if n > 0:
                self.num_samples[client_id] = n
        for client_id, why in sorted(failed.items()):
            _say(f"palette: client {client_id} left out: {why}")
        return sorted(self.num_samples)

    def answer(self, client_id: int, question: dict[str, Any]) -> ConfigRecord:
        """`client_id`'s answer to `question`: a new round to every client, unless this round's answer is still waiting."""
        if question != self._question or client_id not in self._answers:
            answers, failed = self._ask(question, sorted(self.num_samples))
            if failed:
                reasons = "; ".join(f"client {c}: {why}" for c, why in sorted(failed.items()))
                raise RoundFailed(
                    f"palette: statistics round {self.rounds} went unanswered ({reasons}); the solve needs the same "
                    "clients' samples throughout; nothing was trained"
                )
            self._question, self._answers = question, answers
        return self._answers.pop(client_id)

    def _ask(self, question: dict[str, Any], client_ids: list[int]) -> tuple[dict[int, ConfigRecord], dict[int, str]]:
        """One message per client, all at once: the answers and, per client without one, why."""
        record = ConfigRecord(question)
        messages = [
            Message(RecordDict({RECORD: record}), dst_node_id=self.nodes[c], message_type=MESSAGE_TYPE) for c in client_ids
        ]
        self.rounds += 1
        self.download_bytes += len(record.deflate()) * len(messages)  # a ConfigRecord is one serialised object
        by_node = {self.nodes[c]: c for c in client_ids}
        answers: dict[int, ConfigRecord] = {}
        failed: dict[int, str] = {}
        for reply in send_and_receive(self.grid, messages, self.config.engine.round_timeout):
            client_id = by_node.get(reply.metadata.src_node_id)
            if client_id is None:
                continue
            if reply.has_error():
                failed[client_id] = f"error from its SuperNode: {reply.error.reason}"
            elif RECORD not in reply.content.config_records:
                failed[client_id] = "rejected: a reply without an answer"
            else:
                answers[client_id] = reply.content.config_records[RECORD]
                self.upload_bytes += len(answers[client_id].deflate())
        for client_id in client_ids:
            if client_id not in answers and client_id not in failed:
                failed[client_id] = f"no reply within engine.round_timeout = {self.config.engine.round_timeout:g} s"
        return answers, failed


@dataclass(frozen=True)
class NodeSamples:
    """One client's reward samples as the server sees them: a `RewardOracle` whose answers come by Message."""

    rounds: NodeRounds
    client_id: int

    def stats(self, lam: np.ndarray, center: np.ndarray | None = None) -> TiltStats:
        question: dict[str, Any] = {"question": "stats", "lam": [float(v) for v in lam]}
        if center is not None:
            question["center"] = [float(v) for v in center]
        answer = self.rounds.answer(self.client_id, question)
        num_values = len(lam)
        try:
            st = TiltStats(
                total=_number(answer, "total"),
                shift=_number(answer, "shift"),
                sum_exp=_number(answer, "sum_exp"),
                sum_r=np.array(answer["sum_r"], dtype=np.float64).reshape(num_values),
                sum_rr=np.array(answer["sum_rr"], dtype=np.float64).reshape(num_values, num_values),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise RoundFailed(
                f"palette: client {self.client_id}'s statistics are malformed ({err}); nothing was trained"
            ) from None
        why = _implausible(st, self.rounds.num_samples[self.client_id])
        if why:
            raise RoundFailed(f"palette: client {self.client_id}'s statistics are rejected: {why}; nothing was trained")
        return st

    def count_at_most(self, value: int, threshold: float) -> float:
        answer = self.rounds.answer(self.client_id, {"question": "count", "value": int(value), "threshold": float(threshold)})
        try:
            count = _number(answer, "count")
        except (KeyError, TypeError, ValueError) as err:
            raise RoundFailed(f"palette: client {self.client_id}'s count is malformed ({err}); nothing was trained") from None
        if not 0 <= count <= self.rounds.num_samples[self.client_id]:
            raise RoundFailed(
                f"palette: client {self.client_id}'s count {count:g} is outside 0..its sample count; nothing was trained"
            )
        return count


def _number(record: ConfigRecord, key: str) -> float:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} is {type(value).__name__}, not a number")
    if not math.isfinite(value):
        raise ValueError(f"{key} is {value}")
    return float(value)


def _implausible(st: TiltStats, num_samples: float) -> str | None:
    """Why these statistics cannot come from `num_samples` unit-weight samples (None if they can).

    With e_i = exp(a_i - max_j a_j): the largest sample has e = 1 and every other e_i <= 1, so 1 <= sum_exp <= n.
    """
    if not (np.isfinite(st.sum_r).all() and np.isfinite(st.sum_rr).all()):
        return "non-finite sums"
    if st.total != num_samples:
        return f"total {st.total:g} differs from the {num_samples:g} samples it drew"
    if not 1.0 <= st.sum_exp <= num_samples:
        return f"sum_exp {st.sum_exp:g} outside [1, {num_samples:g}]"
    if (np.diag(st.sum_rr) < 0).any():
        return "a negative sum of squares"
    return None


def solve_on_nodes(grid: Grid, config: Config) -> tuple[PaletteSolution, Federation]:
    """`firm train engine=flower palette.targets=...`: the SuperNodes draw the samples, the server solves from their sums.

    The Flower counterpart of `firm.palette.sampling.solve_federated` (firm.train.run's `palette_solve`).
    """
    names = list(config.objectives.names)
    targets = parse_targets(config.palette.targets, names)
    rounds = NodeRounds(grid, config, FlowerEngine.discover_nodes(grid, config))
    start = time.perf_counter()
    client_ids = rounds.sample()
    _say(f"palette: {len(client_ids)} clients drew {sum(rounds.num_samples.values()):g} reference samples")
    federation = Federation([NodeSamples(rounds, c) for c in client_ids])
    solution = solve_palette(federation, targets, names)
    _say(f"palette: solved in {federation.rounds} statistics rounds, {time.perf_counter() - start:.1f} s")
    solution.extra.update(
        engine="flower",
        clients=len(client_ids),
        client_ids=client_ids,
        stat_rounds=federation.rounds,
        stat_upload_bytes=rounds.upload_bytes,
        stat_download_bytes=rounds.download_bytes,
        prompts_per_client=config.palette.prompts_per_client,
        samples_per_prompt=config.palette.samples_per_prompt,
    )
    if len(names) == 2 and config.palette.region:
        solution.extra["region_skipped"] = REGION_SKIPPED
    return solution, federation


def _say(text: str) -> None:
    print(f"firm: {text}", file=sys.stderr, flush=True)
