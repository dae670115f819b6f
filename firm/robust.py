"""Checks on client updates before aggregation, and robust aggregation rules (README "Reliability").

Every engine passes each round's updates through these checks before they reach the aggregator:
- `check_update`: the payload count, tensor names, shapes and dtypes must be those of the global
  adapter, and every value finite; otherwise the update is rejected with the reason;
- norm screening: an update whose L2 norm exceeds `max_norm_ratio` x the round's median norm
  (over the updates that passed the first check, when there are 3 or more) is rejected.
Rejected updates are recorded in the round's `dropped` and never averaged in. FedCMOO's probes
(its first round trip) pass `screen_probes`: the algorithm's layout check (top-k indices in range),
finite values, the sample count asked for, and the same norm screen on their values.

The norm screen needs the round's median before it can accept anyone, so the engines hold a
round's updates in `SpilledUpdates`: each update is checked and its norm taken when it arrives,
then only its scalars (client, sample count, norm) stay in memory and its tensors' raw bytes go
into a buffer that moves to an unnamed temporary file beyond `SPILL_AFTER_BYTES`. When the round
ends, the median decides, and the passing updates are read back one at a time, in arrival order,
into the aggregator: server memory O(d) plus the spill threshold, not O(clients x d), with the
same accepted set and the same aggregate, bit for bit, as `screen` over the decoded updates.

`RobustMean` replaces the sample-weighted running mean of the one-adapter algorithms with a
coordinate-wise median or trimmed mean, optionally after clipping each delta to a maximum norm.
These rules need every delta of the round at once, so they keep them in memory (float64,
O(clients_per_round x d), not O(d): the spill above does not help them). They also change what
FIRM's analysis assumes: the server step is no longer the weighted mean of the client deltas,
so the drift bound and the convergence rate of the paper do not apply as stated
(docs/reliability.md).
"""

from __future__ import annotations

import io
import math
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import torch

from firm.aggregation import RunningMean
from firm.codec import Adapter
from firm.config import REFERENCES, AggregationConfig, Config, ConfigError


class RoundFailed(RuntimeError):
    """Fewer clients returned a usable update than `federation.min_clients` demands."""


def check_enough(config: Config, round_idx: int, stage: str, client_ids: Sequence[int], dropped: dict[int, str]) -> None:
    """Raise RoundFailed when fewer than `federation.min_clients` (0 = all sampled) clients are left."""
    need = config.federation.min_clients or len(client_ids)
    got = len(client_ids) - len(dropped)
    if got < need:
        reasons = "; ".join(f"client {c}: {why}" for c, why in sorted(dropped.items()))
        raise RoundFailed(
            f"round {round_idx} ({stage}): {got} of {len(client_ids)} sampled clients returned an update, "
            f"federation.min_clients needs {need} ({reasons})"
        )


def check_update(uploads: Sequence[Adapter], reference: Adapter, expected: int) -> str | None:
    """Why this client's upload cannot be aggregated (None if it can): count, names, shapes, dtypes, finiteness."""
    if len(uploads) != expected:
        return f"rejected: {len(uploads)} payloads, expected {expected}"
    for i, upload in enumerate(uploads):
        where = f"payload {i}: " if expected > 1 else ""
        if upload.keys() != reference.keys():
            missing, extra = sorted(reference.keys() - upload.keys()), sorted(upload.keys() - reference.keys())
            return f"rejected: {where}tensor names differ (missing {missing[:2]}, unexpected {extra[:2]})"
        for name, ref in reference.items():
            t = upload[name]
            if tuple(t.shape) != tuple(ref.shape):
                return f"rejected: {where}{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
            if t.dtype != ref.dtype:
                return f"rejected: {where}{name} has dtype {t.dtype}, expected {ref.dtype}"
            if not bool(torch.isfinite(t).all()):
                return f"rejected: {where}{name} has NaN or Inf values"
    return None


def update_norm(uploads: Sequence[Adapter]) -> float:
    """L2 norm over all payloads and tensors of one client's upload (float64)."""
    return math.sqrt(sum(float(t.to(torch.float64).pow(2).sum()) for upload in uploads for t in upload.values()))


@dataclass
class Candidate:
    """One client's upload waiting for the round's checks."""

    client_id: int
    uploads: list[Adapter]
    weight: float


def rejection(candidate: Candidate, reference: Adapter, expected: int, expected_samples: float | None = None) -> str | None:
    """Why this update fails the per-update checks; None if it passes.

    The checks: `check_update`, a positive finite sample count and, when the server knows what it
    asked the client to do (`expected_samples`, e.g. K x B x G completions), that count exactly:
    the count is the client's aggregation weight, so a client claiming more would own the mean.
    """
    reason = check_update(candidate.uploads, reference, expected)
    if reason is None and not (math.isfinite(candidate.weight) and candidate.weight > 0):
        reason = f"rejected: sample count {candidate.weight} is not positive"
    if reason is None and expected_samples is not None:
        reason = count_rejection(candidate.weight, expected_samples)
    return reason


def count_rejection(weight: float, expected_samples: float) -> str | None:
    """Why a reported sample count (the aggregation weight) is refused: it must be what the server asked for."""
    if weight != expected_samples:
        return f"rejected: reports {weight:g} samples, but the server asked for {expected_samples:g}"
    return None


def norm_rejections(norms: dict[int, float], max_norm_ratio: float) -> dict[int, str]:
    """The clients whose update norm exceeds `max_norm_ratio` x the median of `norms`, with the reason.

    Off (nothing rejected) when `max_norm_ratio` <= 0 or fewer than 3 updates passed the other checks.
    """
    if max_norm_ratio <= 0 or len(norms) < 3:
        return {}
    median = statistics.median(norms.values())
    limit = max_norm_ratio * median
    return {
        client_id: f"rejected: update norm {norm:.4g} > {max_norm_ratio:g} x the round's median {median:.4g}"
        for client_id, norm in norms.items()
        if norm > limit
    }


def screen(
    candidates: Sequence[Candidate],
    reference: Adapter,
    expected: int,
    max_norm_ratio: float,
    expected_samples: float | None = None,
) -> tuple[list[Candidate], dict[int, str]]:
    """The candidates that pass `rejection` and the norm screen, and the reasons for the others.

    Needs every decoded update of the round at once; the engines use `SpilledUpdates`, which
    decides the same way while holding the updates' bytes out of memory.
    """
    rejected: dict[int, str] = {}
    passed: list[Candidate] = []
    for c in candidates:
        reason = rejection(c, reference, expected, expected_samples)
        if reason is None:
            passed.append(c)
        else:
            rejected[c.client_id] = reason
    if max_norm_ratio > 0 and len(passed) >= 3:
        too_large = norm_rejections({c.client_id: update_norm(c.uploads) for c in passed}, max_norm_ratio)
        rejected.update(too_large)
        passed = [c for c in passed if c.client_id not in too_large]
    return passed, rejected


def screen_probes(
    candidates: Sequence[Candidate],
    check: Callable[[Sequence[Adapter]], str | None],
    expected_samples: float,
    max_norm_ratio: float,
) -> tuple[list[Candidate], dict[int, str]]:
    """A round's probes (the first trip of a two-round-trip algorithm, FedCMOO) screened as updates are.

    Per probe: the algorithm's own layout check (`check`: names, dtypes, shapes, index ranges,
    finite values; `Prober.check_probe`) and the sample count the server asked for; then
    the norm screen over the probes that passed, on their values (the floating-point tensors:
    top-k indices are positions, not values). Returns the passing probes and why the others failed.
    """
    rejected: dict[int, str] = {}
    passed: list[Candidate] = []
    for c in candidates:
        reason = check(c.uploads)
        if reason is None:
            reason = count_rejection(c.weight, expected_samples)
        if reason is None:
            passed.append(c)
        else:
            rejected[c.client_id] = reason
    values = [[{n: t for n, t in u.items() if t.is_floating_point()} for u in c.uploads] for c in passed]
    too_large = norm_rejections({c.client_id: update_norm(v) for c, v in zip(passed, values, strict=True)}, max_norm_ratio)
    rejected.update(too_large)
    return [c for c in passed if c.client_id not in too_large], rejected


SPILL_AFTER_BYTES = 2**20
"""Bytes of held updates a round keeps in memory before `SpilledUpdates` moves them to a temporary file.

Small rounds of small adapters (tests, a few tiny-model clients) never touch the disk; larger
ones cost at most this much memory above O(d), and one write and one read of each update
(benchmarks/aggregation.py)."""


@dataclass
class _Held:
    """What stays in memory of an update that passed the per-update checks: scalars and where its bytes are."""

    client_id: int
    weight: float
    norm: float  # L2 norm over its payloads (NaN when the norm screen is off)
    offset: int  # where its first payload starts in the spill; the others follow it
    orders: list[tuple[str, ...]]  # each payload's tensor names in the order received (shared tuples)


class SpilledUpdates:
    """A round's updates waiting for the norm screen, in O(d) memory (module docstring).

    `add` applies the per-update checks at once, keeps the passing update's norm and weight in
    memory and writes its tensors' raw bytes to a `tempfile.SpooledTemporaryFile`: in memory up
    to `spill_after` bytes (default `SPILL_AFTER_BYTES`), then in a file in `directory` (default:
    the system's temporary directory, `TMPDIR`) that has no name on POSIX (unlinked when created),
    so the kernel frees it when it is closed or the process dies, even by SIGKILL. `screen` then decides as `screen` above does, and `passed` reads the accepted
    updates back one at a time. Use it as a context manager (or call `close`) so the spill goes
    at round end, also on error.

    The spill keeps the decoded tensors, not the bytes that came over the wire: it then holds
    exactly what was screened whatever the engine's wire format (safetensors, Flower records, a
    compressed upload), and needs no header, since an update that passed `check_update` has the
    reference's names, shapes and dtypes: only the order of its names is kept, so it reads back
    as the same dict, bit for bit and in the same order (the aggregator's float64 sums over
    tensors, e.g. sum_i ||Delta_i||^2, then add in the same order as from the decoded update).
    """

    def __init__(
        self,
        reference: Adapter,
        expected: int,
        max_norm_ratio: float,
        spill_after: int | None = None,
        directory: str | None = None,
        expected_samples: float | None = None,
    ) -> None:
        self.reference, self.expected, self.max_norm_ratio = reference, expected, max_norm_ratio
        self.expected_samples = expected_samples
        limit = SPILL_AFTER_BYTES if spill_after is None else spill_after
        self.spill = tempfile.SpooledTemporaryFile(max_size=limit, dir=directory)  # noqa: SIM115 (closed in close)
        self.payload_bytes = sum(t.numel() * t.element_size() for t in reference.values())
        self.held: list[_Held] = []
        self.rejected: dict[int, str] = {}  # client -> why, from the per-update checks, in arrival order
        self.size = 0  # bytes written to the spill
        self._orders: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per distinct name order

    def add(self, candidate: Candidate) -> None:
        """Check one update now; keep its scalars and spill its tensors, or record why it was rejected."""
        reason = rejection(candidate, self.reference, self.expected, self.expected_samples)
        if reason is not None:
            self.rejected[candidate.client_id] = reason
            return
        norm = update_norm(candidate.uploads) if self.max_norm_ratio > 0 else math.nan
        held = _Held(candidate.client_id, candidate.weight, norm, self.size, [])
        for upload in candidate.uploads:
            order = tuple(upload)
            held.orders.append(self._orders.setdefault(order, order))
            for t in upload.values():
                self.spill.write(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
            self.size += self.payload_bytes
        self.held.append(held)

    @property
    def on_disk(self) -> bool:
        """Whether the spill has moved from memory to its temporary file."""
        return not isinstance(self.spill._file, io.BytesIO)

    def screen(self) -> dict[int, str]:
        """Every rejected update of the round with the reason: the per-update checks', then the norm screen's."""
        rejected = dict(self.rejected)
        rejected.update(norm_rejections({h.client_id: h.norm for h in self.held}, self.max_norm_ratio))
        return rejected

    def passed(self) -> Iterator[Candidate]:
        """The updates that pass `screen`, read back from the spill one at a time, in arrival order."""
        rejected = self.screen()
        for held in self.held:
            if held.client_id in rejected:
                continue
            self.spill.seek(held.offset)
            uploads = []
            for order in held.orders:
                data = bytearray(self.payload_bytes)  # the payload's tensors are views of it
                self.spill.readinto(data)
                upload, start = {}, 0
                for name in order:
                    ref = self.reference[name]
                    if ref.numel() == 0:  # frombuffer refuses empty views
                        upload[name] = torch.empty(ref.shape, dtype=ref.dtype)
                        continue
                    flat = torch.frombuffer(data, dtype=ref.dtype, count=ref.numel(), offset=start)
                    upload[name] = flat.view(ref.shape)
                    start += ref.numel() * ref.element_size()
                uploads.append(upload)
            yield Candidate(held.client_id, uploads, held.weight)

    def close(self) -> None:
        """Remove the spill (idempotent)."""
        self.spill.close()

    def __enter__(self) -> SpilledUpdates:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()


class RobustMean(RunningMean):
    """A one-adapter aggregator with clipping and a coordinate-wise median or trimmed mean (see the module docstring).

    `add` keeps the (clipped) deltas; `mean` returns the rule's aggregate, which `apply_mean_delta`
    applies as theta + eta_g * aggregate. The running sums of the parent are kept too, so
    `update_drift` is still measured against the sample-weighted mean of the deltas received.
    """

    def __init__(self, rule: str, trim: float = 0.2, clip_norm: float = 0.0) -> None:
        super().__init__()
        self.rule, self.trim, self.clip_norm = rule, trim, clip_norm
        self.deltas: list[Adapter] = []
        self.clipped = 0

    def add(self, uploads: Adapter | Sequence[Adapter], weight: float) -> None:
        delta = uploads if isinstance(uploads, dict) else uploads[0] if len(uploads) == 1 else None
        if delta is None:
            raise ValueError("a one-adapter aggregator got several payloads")
        if self.clip_norm > 0:
            norm = update_norm([delta])
            if norm > self.clip_norm:
                delta = {n: t * (self.clip_norm / norm) for n, t in delta.items()}
                self.clipped += 1
        super().add(delta, weight)
        self.deltas.append({n: t.to(torch.float64) for n, t in delta.items()})

    def mean(self) -> Adapter:
        if self.rule == "mean":
            return super().mean()
        if not self.deltas:
            raise ValueError("no client delta was aggregated")
        result: Adapter = {}
        for name in self.deltas[0]:
            ordered = torch.stack([d[name] for d in self.deltas]).sort(dim=0).values  # [n, ...], per coordinate
            n = ordered.shape[0]
            if self.rule == "median":  # the mean of the two middle values for an even count
                result[name] = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
            elif self.rule == "trimmed_mean":
                k = int(self.trim * n)
                result[name] = ordered[k : n - k].mean(dim=0)
            else:
                raise ValueError(f"unknown aggregation rule {self.rule!r}")
        return result

    @property
    def stats(self) -> dict[str, object]:
        return {"aggregation": self.rule, "clipped": self.clipped} if self.clip_norm > 0 or self.rule != "mean" else {}


def mean_aggregator(config: AggregationConfig) -> RunningMean:
    """The aggregator of the one-adapter algorithms: the running weighted mean, or `RobustMean` when configured."""
    if config.rule == "mean" and config.clip_norm <= 0:
        return RunningMean()
    return RobustMean(config.rule, config.trim, config.clip_norm)


# --------------------------------------------------------------------------- settings


def validate_config(config: Config) -> None:
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
