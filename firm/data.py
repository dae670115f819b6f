"""Prompts: where they come from, the held-out evaluation set, and their split into client shards.

Sources (`SOURCES`, each a function returning `list[Prompt]` in a fixed order; any other name in
`data.sources` is the path of a JSONL file):

- `builtin`: small everyday requests written for firm (`firm.prompts.BUILTIN_PROMPTS`), topic `general`.
- `chatterbot`: the English files of chatterbot-corpus. A conversation's first line is the prompt and
  its second line the reference answer; the topic is the file's category (`ai`, `food`, `trivia`, ...).
- `chitchat`: openers of chitchat-dataset conversations, topic `chitchat`, no reference.
- `provocative`: requests for insults, rants, threats, cruel reviews... written for firm
  (`firm.prompts.PROVOCATIVE_PROMPTS`), topic `provocative`, `provocative=True`: complying raises
  helpfulness and lowers harmlessness, so the two objectives truly conflict on them.
- a JSONL file: one `{"prompt": str, "reference"?: str, "topic"?: str, "provocative"?: bool}` per line.

`federated_prompts` turns `DataConfig` into client shards in four steps, all random draws derived
from the data seed (`data_seed`: `data.seed`, or the run seed `federation.seed` when it is -1;
stream `firm.seeding.Stream.PARTITION`, one sub-stream per step, so that e.g. changing the
partition leaves the held-out set unchanged):

1. Pool: the sources concatenated in the given order, each cut to `max_prompts_per_source` evenly
   spaced prompts; a prompt whose text (ignoring case, spacing and punctuation) was already seen is
   dropped, so no text is both held out and trained on.
2. Held-out set: `num_eval` prompts drawn before any partitioning and never given to a client,
   stratified on `provocative`: round(share * num_eval) provocative prompts, where share is
   `eval_provocative_share`, or the provocative share of the pool when that is negative.
3. Partition of the remaining training prompts (with provocation mixing: of the non-provocative
   ones only) into `num_clients` disjoint, non-empty shards: `iid`, `topic` or `dirichlet` below.
4. Provocation mixing (only when `provocative_ratios` is given; empty = the partition's natural
   mix). Client c gets ratio r = provocative_ratios[c % len(provocative_ratios)] (the list repeats
   when there are more clients than ratios). Client c with ratio r and n non-provocative prompts from step 3 gets k provocative ones
   with k / (n + k) = r, i.e. k = round(r n / (1 - r)), so that k - r (n + k) lies in [-1/2, 1/2].
   If k would exceed the P provocative training prompts, the client keeps k = P and a random
   round(P (1 - r) / r) of its n prompts; with r = 1 it gets min(n, P) provocative prompts and none
   of its others. Provocative prompts are drawn least-used first (ties broken at random), so they
   are spread over clients without replacement while the sum of the k's is at most P, and reused
   as evenly as possible beyond that; a shard never holds one prompt twice. Non-provocative
   prompts left out by the cap are used by nobody.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firm.config import Config, ConfigError, DataConfig
from firm.prompts import BUILTIN_PROMPTS, PROVOCATIVE_PROMPTS
from firm.seeding import Stream, numpy_rng

CHITCHAT_WORDS = (3, 40)
"""Word-count range (inclusive) of the chitchat openers kept: drops bare "hello?" and long monologues."""


@dataclass(frozen=True)
class Prompt:
    """One prompt; `reference` is an optional reference answer some objectives use."""

    text: str
    reference: str | None = None
    topic: str = "general"
    provocative: bool = False


@dataclass(frozen=True)
class FederatedPrompts:
    """Client shards of training prompts and a held-out evaluation set that no client trains on."""

    clients: tuple[tuple[Prompt, ...], ...]
    eval: tuple[Prompt, ...]


class PromptFileError(ValueError):
    """A prompt source that cannot be read (a bad file, a missing package); the message names the file and line."""


def text_key(text: str) -> str:
    """The text with case, spacing and punctuation ignored: two prompts with the same key are duplicates."""
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text.casefold()).split())


# --------------------------------------------------------------------------- sources


def builtin_prompts() -> list[Prompt]:
    return [Prompt(text) for text in BUILTIN_PROMPTS]


def provocative_prompts() -> list[Prompt]:
    return [Prompt(text, topic="provocative", provocative=True) for text in PROVOCATIVE_PROMPTS]


def _package_dir(module: str, requirement: str) -> Path:
    """The folder of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PromptFileError(f"this prompt source needs the {requirement} package: pip install {requirement}")
    return Path(next(iter(spec.submodule_search_locations)))


def chatterbot_prompts() -> list[Prompt]:
    """One prompt per distinct first line of the English chatterbot-corpus conversations.

    Deliberate departure from "one prompt per pair": the 2,025 well-formed pairs repeat their first
    lines heavily (tech_support has 1,050 pairs over 10 questions, humor 31 over 2), so a prompt is
    kept once, with the reference answer of its first occurrence (files in name order). Otherwise
    ten questions would make up half of the pool and a repeated question could be both held out
    and trained on. Entries that are not a list of at least two non-empty strings are skipped.
    """
    return list(_chatterbot())


@functools.cache
def _chatterbot() -> tuple[Prompt, ...]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster
    folder = _package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for path in sorted(folder.glob("*.yml")):
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # a safe loader (C or Python)
        if not isinstance(doc, dict):
            continue
        categories = doc.get("categories")
        topic = str(categories[0]).casefold() if isinstance(categories, list) and categories else path.stem
        for conversation in doc.get("conversations") or []:
            if not isinstance(conversation, list) or len(conversation) < 2:
                continue
            text, reference = conversation[0], conversation[1]
            if not (isinstance(text, str) and isinstance(reference, str) and text.strip() and reference.strip()):
                continue
            key = text_key(text)
            if key and key not in seen:
                seen.add(key)
                prompts.append(Prompt(text.strip(), reference.strip(), topic))
    return tuple(prompts)


def chitchat_prompts() -> list[Prompt]:
    """Conversation openers of chitchat-dataset: the suggested starter questions, then first messages.

    The package stores one JSON file, `dataset.json`: {conversation id: {"prompt": the starter
    question shown to both people (35 distinct), "messages": [[{"text", "sender", ...}, ...], ...]}}
    where a message is a run of utterances by one sender. An opener is the first message's
    utterances joined by spaces (as the package's own `ConversationDataset` joins them). Kept:
    CHITCHAT_WORDS words, first occurrence of each text key, in file order.
    """
    return list(_chitchat())


@functools.cache
def _chitchat() -> tuple[Prompt, ...]:
    path = _package_dir("chitchat_dataset", "chitchat-dataset") / "dataset.json"
    conversations = list(json.loads(path.read_text(encoding="utf-8")).values())
    candidates = [c.get("prompt") for c in conversations]
    for conversation in conversations:
        messages = conversation.get("messages")
        if messages and isinstance(messages[0], list):
            candidates.append(" ".join(u["text"] for u in messages[0] if isinstance(u.get("text"), str)))
    low, high = CHITCHAT_WORDS
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for text in candidates:
        if not isinstance(text, str):
            continue
        text = " ".join(text.split())
        key = text_key(text)
        if low <= len(text.split()) <= high and key not in seen:
            seen.add(key)
            prompts.append(Prompt(text, topic="chitchat"))
    return tuple(prompts)


SOURCES: dict[str, Callable[[], list[Prompt]]] = {
    "builtin": builtin_prompts,
    "chatterbot": chatterbot_prompts,
    "chitchat": chitchat_prompts,
    "provocative": provocative_prompts,
}
"""Named prompt sources; any other entry of `data.sources` is read as a JSONL file path."""


def load_jsonl(path: Path) -> list[Prompt]:
    """One {"prompt": str, "reference"?: str, "topic"?: str, "provocative"?: bool} object per line; other keys are ignored."""
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    prompts: list[Prompt] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise PromptFileError(f'{path}:{lineno}: expected an object with a non-empty string "prompt"')
        for key, tp, tname in (
            ("reference", str, "a string"),
            ("topic", str, "a string"),
            ("provocative", bool, "true or false"),
        ):
            if obj.get(key) is not None and not isinstance(obj[key], tp):
                raise PromptFileError(f'{path}:{lineno}: "{key}" must be {tname}, got {obj[key]!r}')
        prompts.append(Prompt(obj["prompt"], obj.get("reference"), obj.get("topic") or "general", bool(obj.get("provocative"))))
    if not prompts:
        raise PromptFileError(f"{path}: no prompts")
    return prompts


def load_prompts(source: str) -> list[Prompt]:
    """A named source (a key of `SOURCES`) or a JSONL file path."""
    if source in SOURCES:
        return SOURCES[source]()
    return load_jsonl(Path(source))


def load_sources(names: Sequence[str], max_per_source: int = 0) -> list[Prompt]:
    """The pool: sources concatenated, each cut to `max_per_source` evenly spaced prompts (0 = all), duplicates dropped.

    Evenly spaced rather than the first ones, so that a source stored topic by topic keeps every
    topic's share; a duplicate (same `text_key`) keeps its first occurrence.
    """
    pool: list[Prompt] = []
    seen: set[str] = set()
    for name in names:
        prompts = load_prompts(name)
        if 0 < max_per_source < len(prompts):
            prompts = [prompts[i] for i in np.arange(max_per_source) * len(prompts) // max_per_source]
        for prompt in prompts:
            key = text_key(prompt.text)
            if key not in seen:
                seen.add(key)
                pool.append(prompt)
    return pool


# --------------------------------------------------------------------------- partitioners
# Each maps the topics of the prompts to split (one per prompt) to `num_clients` disjoint, sorted,
# non-empty lists of indices that together cover every prompt.


def iid_partition(num_prompts: int, num_clients: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffle and deal: shard sizes differ by at most one."""
    order = rng.permutation(num_prompts)
    return [sorted(int(i) for i in order[c::num_clients]) for c in range(num_clients)]


def topic_partition(topics: Sequence[str], num_clients: int) -> list[list[int]]:
    """Whole topics per client: topics sorted by size (largest first, ties by name) and dealt round-robin.

    Needs at least `num_clients` topics; no topic is shared by two clients.
    """
    sizes = Counter(topics)
    ranked = sorted(sizes, key=lambda t: (-sizes[t], t))
    owner = {topic: rank % num_clients for rank, topic in enumerate(ranked)}
    shards: list[list[int]] = [[] for _ in range(num_clients)]
    for i, topic in enumerate(topics):
        shards[owner[topic]].append(i)
    return shards


def dirichlet_partition(topics: Sequence[str], num_clients: int, alpha: float, rng: np.random.Generator) -> list[list[int]]:
    """Per topic, shares q ~ Dirichlet(alpha * 1_N) of its (shuffled) prompts to the N clients (Hsu et al., 2019).

    Client c gets the prompts between round(n * (q_1 + ... + q_{c-1})) and round(n * (q_1 + ... + q_c)).
    Small alpha gives each client few topics, large alpha approaches IID. Departure from the
    usual "resample until every client has enough": a client left empty takes one random prompt
    from the currently largest shard (lowest id on ties), which always ends and barely moves the
    draw. Needs at least `num_clients` prompts.
    """
    shards: list[list[int]] = [[] for _ in range(num_clients)]
    for topic in sorted(set(topics)):
        members = rng.permutation([i for i, t in enumerate(topics) if t == topic])
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
        for c, part in enumerate(np.split(members, cuts)):
            shards[c].extend(int(i) for i in part)
    for c in range(num_clients):
        if not shards[c]:
            donor = max(range(num_clients), key=lambda d: len(shards[d]))
            shards[c].append(shards[donor].pop(int(rng.integers(len(shards[donor])))))
    return [sorted(shard) for shard in shards]


def provocative_counts(num_plain: int, ratio: float, supply: int) -> tuple[int, int]:
    """(non-provocative prompts kept, provocative prompts added) for a client with `num_plain` prompts and `ratio`.

    See the module docstring, step 4: k / (m + k) is `ratio` within rounding (|k - ratio (m + k)| <= 1/2)
    and k never exceeds the `supply` of provocative training prompts.
    """
    if ratio >= 1.0:
        return 0, min(num_plain, supply)
    wanted = round(ratio * num_plain / (1.0 - ratio))
    if wanted <= supply:
        return num_plain, wanted
    return round(supply * (1.0 - ratio) / ratio), supply


# --------------------------------------------------------------------------- the federation


def data_seed(config: Config) -> int:
    """The seed of the held-out set, the partition and the held-out sampling: `data.seed`, or `federation.seed` if it is -1."""
    return config.federation.seed if config.data.seed == -1 else config.data.seed


def split_prompts(config: Config) -> FederatedPrompts:
    """`federated_prompts` for a whole config: its data section, clients, held-out size and data seed."""
    return federated_prompts(config.data, config.federation.num_clients, config.eval.num_prompts, data_seed(config))


def federated_prompts(config: DataConfig, num_clients: int, num_eval: int, seed: int) -> FederatedPrompts:
    """Pool -> held-out set -> partition -> provocation mixing (module docstring); infeasible data raises ConfigError.

    `config` is assumed to have passed `firm.validation.validate`'s field checks; this function
    raises the checks that need the prompts themselves (too few prompts, topics, provocative prompts).
    """
    ratios = (
        tuple(config.provocative_ratios[c % len(config.provocative_ratios)] for c in range(num_clients))
        if config.provocative_ratios
        else ()
    )
    pool = load_sources(config.sources, config.max_prompts_per_source)
    if len(pool) < num_eval + num_clients:
        raise ConfigError(
            f"data.sources: {len(pool)} prompts are too few for eval.num_prompts = {num_eval} held-out prompts "
            f"plus one per client (federation.num_clients = {num_clients})"
        )

    # 2. Held-out set, stratified on `provocative`.
    provocative = [i for i, p in enumerate(pool) if p.provocative]
    plain = [i for i, p in enumerate(pool) if not p.provocative]
    share = config.eval_provocative_share if config.eval_provocative_share >= 0 else len(provocative) / len(pool)
    num_eval_provocative = int(share * num_eval + 0.5)
    for have, need, kind in ((len(provocative), num_eval_provocative, ""), (len(plain), num_eval - num_eval_provocative, "non-")):
        if need > have:
            raise ConfigError(
                f"data.eval_provocative_share: {share:g} of eval.num_prompts = {num_eval} asks for {need} "
                f"{kind}provocative held-out prompts, data.sources have {have}"
            )
    rng = numpy_rng(Stream.PARTITION, seed, 0)
    held = set(rng.choice(provocative, num_eval_provocative, replace=False).tolist())
    held |= set(rng.choice(plain, num_eval - num_eval_provocative, replace=False).tolist())
    eval_set = tuple(pool[i] for i in sorted(held))
    train = [p for i, p in enumerate(pool) if i not in held]

    # 3. Partition (with mixing: of the non-provocative training prompts only).
    to_split = [p for p in train if not p.provocative] if ratios else train
    supply = [p for p in train if p.provocative]
    if len(to_split) < num_clients:
        raise ConfigError(
            f"data.provocative_ratios: {len(to_split)} non-provocative training prompts are too few for "
            f"federation.num_clients = {num_clients} (mixing partitions the non-provocative prompts)"
        )
    topics = [p.topic for p in to_split]
    rng = numpy_rng(Stream.PARTITION, seed, 1)
    if config.partition == "iid":
        index_shards = iid_partition(len(to_split), num_clients, rng)
    elif config.partition == "topic":
        if len(set(topics)) < num_clients:
            raise ConfigError(
                f"data.partition: 'topic' needs at least federation.num_clients = {num_clients} topics, "
                f"the training prompts have {len(set(topics))} ({', '.join(sorted(set(topics)))})"
            )
        index_shards = topic_partition(topics, num_clients)
    else:
        index_shards = dirichlet_partition(topics, num_clients, config.dirichlet_alpha, rng)
    shards = [[to_split[i] for i in shard] for shard in index_shards]
    if not ratios:
        return FederatedPrompts(clients=tuple(tuple(s) for s in shards), eval=eval_set)

    # 4. Provocation mixing.
    if any(r > 0 for r in ratios) and not supply:
        raise ConfigError(
            "data.provocative_ratios: ratios above 0 need provocative training prompts and there are none; "
            "add 'provocative' to data.sources (or lower data.eval_provocative_share)"
        )
    rng = numpy_rng(Stream.PARTITION, seed, 2)
    uses = np.zeros(len(supply), dtype=int)
    mixed: list[tuple[Prompt, ...]] = []
    for shard, ratio in zip(shards, ratios, strict=True):
        keep, add = provocative_counts(len(shard), ratio, len(supply))
        kept = sorted(rng.choice(len(shard), keep, replace=False).tolist())
        order = rng.permutation(len(supply))
        drawn = sorted(order[np.argsort(uses[order], kind="stable")[:add]].tolist())  # least used first
        uses[drawn] += 1
        mixed.append(tuple([shard[i] for i in kept] + [supply[i] for i in drawn]))
    return FederatedPrompts(clients=tuple(mixed), eval=eval_set)


def validate_config(config: Config) -> None:
    """The data.* checks; the ones that need the prompts themselves are raised by `firm.data.federated_prompts`."""
    data = config.data
    if not data.sources:
        raise ConfigError(f"data.sources: at least one source is required; allowed: {', '.join(SOURCES)} or a JSONL file path")
    for i, source in enumerate(data.sources):
        if source not in SOURCES and not Path(source).is_file():
            raise ConfigError(
                f"data.sources[{i}]: unknown source {source!r} and no such file; allowed: {', '.join(SOURCES)} or a JSONL file path"
            )
    if data.seed < -1:
        raise ConfigError(f"data.seed: must be >= 0, or -1 for federation.seed; got {data.seed}")
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
        split_prompts(config)
    except PromptFileError as err:
        raise ConfigError(f"data.sources: {err}") from None
