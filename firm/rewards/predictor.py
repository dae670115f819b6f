"""The preference predictor: GPO, a transformer over a group's rated examples, and a regression head.

GPO (Zhao et al. 2023, arXiv 2310.11523, section 3; federated by PluralLLM, arXiv 2503.09925): a
group shows C context pairs (x_i, y_i), an item's embedding and its rating level y in 1..K, and
the model predicts the group's distribution over the K levels for each of Q query items,

    p(y_q | x_q, {(x_i, y_i)}_{i=1..C}) = softmax(W h_q),   h = Transformer([tok(x_i, y_i); tok(x_q, .)]),

trained by the NLL of the queries' true levels. Context tokens attend to context tokens only;
a query attends to every context token and to itself, never to another query, so its prediction
does not depend on which other queries share the batch. There is no positional encoding, so the
prediction is invariant to the order of the context. Deliberate choices GPO leaves open:
- the token is Linear([x; onehot(y); is_context]) (queries: a zero onehot and flag 0);
- the K levels are K classes (GPO's survey options), so the head ignores their order;
- pre-LayerNorm layers with GELU and a 4 x d_model feed-forward, and a final LayerNorm;
- every token may attend to itself, also a padded context token (whose output is never read):
  a row with no allowed key would give NaN, and a NaN value leaks into real tokens through the
  zero attention weight of the next layer's matmul.

`Regression` is the plain alternative, the "global model" PluralLLM compares against: it ignores
the context, so it cannot tell groups apart; see its docstring for its distribution over levels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("gpo", "regression")


@dataclass(frozen=True)
class PredictorSpec:
    """Everything needed to rebuild a predictor (its weights aside); serialised as `to_dict`."""

    kind: str
    """`gpo` (conditioned on the group's context) or `regression` (the embedding alone)."""
    dim: int
    """D, the embedding dimension (384 for MiniLM)."""
    levels: int = 10
    """K, the rating levels 1..K."""
    d_model: int = 128
    """GPO: the transformer's width."""
    layers: int = 2
    """GPO: transformer layers."""
    heads: int = 4
    """GPO: attention heads (must divide d_model)."""
    hidden: int = 128
    """Regression: the MLP's hidden width; 0 = linear in x."""
    dropout: float = 0.0
    """Dropout inside the predictor in training mode."""

    def __post_init__(self) -> None:
        ints = ("dim", "levels", "d_model", "layers", "heads", "hidden")
        for name in ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"predictor spec: {name} must be an int, got {value!r}")
        if self.kind not in KINDS:
            raise ValueError(f"predictor spec: kind must be one of {KINDS}, got {self.kind!r}")
        if self.dim < 1 or self.levels < 2 or self.d_model < 1 or self.layers < 1 or self.heads < 1 or self.hidden < 0:
            raise ValueError(
                f"predictor spec: need dim >= 1, levels >= 2, d_model, layers, heads >= 1 and hidden >= 0, got {self}"
            )
        if self.d_model % self.heads:
            raise ValueError(f"predictor spec: heads ({self.heads}) must divide d_model ({self.d_model})")
        if not isinstance(self.dropout, int | float) or isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"predictor spec: dropout must be a number in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))  # a JSON 0 reads back as the float 0.0

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready; `from_dict(to_dict())` is the identity."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> PredictorSpec:
        """The spec written by `to_dict`: exactly its keys (a missing or unknown key is a ValueError), values checked."""
        if not isinstance(d, dict):
            raise ValueError(f"predictor spec: expected a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - names):
            raise ValueError(f"predictor spec: unknown key(s) {unknown}")
        if missing := sorted(names - set(d)):
            raise ValueError(f"predictor spec: missing key(s) {missing}")
        return cls(**d)


class GPO(nn.Module):
    """GPO's transformer: a group's context pairs and the queries in one sequence, a level head on the queries."""

    def __init__(self, spec: PredictorSpec) -> None:
        super().__init__()
        self.levels, self.heads = spec.levels, spec.heads
        self.embed = nn.Linear(spec.dim + spec.levels + 1, spec.d_model)
        layer = nn.TransformerEncoderLayer(
            spec.d_model, spec.heads, 4 * spec.d_model, spec.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # enable_nested_tensor needs post-LN layers and a key padding mask; we pass neither.
        self.encoder = nn.TransformerEncoder(layer, spec.layers, norm=nn.LayerNorm(spec.d_model), enable_nested_tensor=False)
        self.head = nn.Linear(spec.d_model, spec.levels)

    def forward(self, context_x: Tensor, context_y: Tensor, context_mask: Tensor, query_x: Tensor) -> Tensor:
        """context_x [B, C, D] float, context_y [B, C] long in 1..K (any value where masked), context_mask [B, C] bool
        (True = a real item; C = 0 or all-False rows: the prediction is from the query alone), query_x [B, Q, D]
        -> log_probs [B, Q, K], a log-softmax over the levels."""
        b, c, q = query_x.shape[0], context_x.shape[1], query_x.shape[1]
        levels = torch.where(context_mask, context_y - 1, torch.zeros_like(context_y))  # [B, C], 0-based
        onehot = F.one_hot(levels, self.levels).to(context_x.dtype) * context_mask.unsqueeze(-1)  # [B, C, K]
        context_tok = torch.cat([context_x, onehot, context_mask.unsqueeze(-1).to(context_x.dtype)], dim=-1)  # [B, C, D+K+1]
        query_tok = torch.cat([query_x, query_x.new_zeros(b, q, self.levels + 1)], dim=-1)  # [B, Q, D+K+1]
        tokens = self.embed(torch.cat([context_tok, query_tok], dim=1))  # [B, C+Q, d_model]

        # blocked[b, i, j]: token i may not attend to token j. Allowed: real context keys, and oneself.
        n = c + q
        real_key = torch.cat([context_mask, context_mask.new_zeros(b, q)], dim=1)  # [B, C+Q]
        eye = torch.eye(n, dtype=torch.bool, device=query_x.device)  # [C+Q, C+Q]
        blocked = ~(real_key.unsqueeze(1) | eye)  # [B, C+Q, C+Q]
        blocked = blocked.repeat_interleave(self.heads, dim=0)  # [B*heads, C+Q, C+Q], batch-major as attention expects

        hidden = self.encoder(tokens, mask=blocked)  # [B, C+Q, d_model]
        return F.log_softmax(self.head(hidden[:, c:]), dim=-1)  # [B, Q, K]


class Regression(nn.Module):
    """The plain alternative: ignores the context. An MLP (linear when hidden = 0) on x -> (mu, log sigma),
    trained by the Gaussian NLL of y (`predictor_loss`).

    Its distribution over levels is the Gaussian discretised on the levels and renormalised over 1..K,

        P(k) ∝ Phi((k + 0.5 - mu) / sigma) - Phi((k - 0.5 - mu) / sigma),   k = 1..K,

    computed in log space: log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b))),
    with both ends reflected into the lower tail (Phi(b) - Phi(a) = Phi(-a) - Phi(-b)) when the bin
    lies above the mean, where `log_ndtr` is accurate and the difference does not cancel. The ratio
    exp(log Phi(a) - log Phi(b)) is capped at 1 - 1e-30 so a bin never has zero mass (a floor that
    only bites for a degenerate sigma, where every bin is nearly equal anyway).

    The output layer starts at mu = (K + 1) / 2 and sigma = K / 4, the middle of the scale, so the
    first NLL gradients are moderate whatever the rating scale.
    """

    def __init__(self, spec: PredictorSpec) -> None:
        super().__init__()
        self.levels = spec.levels
        if spec.hidden:
            out = nn.Linear(spec.hidden, 2)
            self.net: nn.Module = nn.Sequential(nn.Linear(spec.dim, spec.hidden), nn.GELU(), nn.Dropout(spec.dropout), out)
        else:
            out = nn.Linear(spec.dim, 2)
            self.net = out
        with torch.no_grad():
            out.bias.copy_(torch.tensor([(spec.levels + 1) / 2, math.log(spec.levels / 4)]))

    def moments(self, query_x: Tensor) -> tuple[Tensor, Tensor]:
        """query_x [B, Q, D] -> (mu [B, Q], sigma [B, Q]) of the Gaussian over the rating."""
        out = self.net(query_x)  # [B, Q, 2]
        return out[..., 0], out[..., 1].exp()

    def forward(self, context_x: Tensor, context_y: Tensor, context_mask: Tensor, query_x: Tensor) -> Tensor:
        """Same signature as GPO; the context is ignored.  -> log_probs [B, Q, K]"""
        mu, sigma = self.moments(query_x)  # [B, Q], [B, Q]
        k = torch.arange(1, self.levels + 1, device=query_x.device, dtype=query_x.dtype)  # [K]
        lo = (k - 0.5 - mu.unsqueeze(-1)) / sigma.unsqueeze(-1)  # [B, Q, K]
        hi = (k + 0.5 - mu.unsqueeze(-1)) / sigma.unsqueeze(-1)  # [B, Q, K]
        above = lo + hi > 0  # the bin's centre is above the mean: reflect it
        lo, hi = torch.where(above, -hi, lo), torch.where(above, -lo, hi)
        log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
        ratio = (log_lo - log_hi).clamp(max=-1e-30)  # log(Phi(lo) / Phi(hi)) <= log(1 - 1e-30) ~ -1e-30
        log_mass = log_hi + torch.log(-torch.expm1(ratio))  # [B, Q, K] = log(Phi(hi) - Phi(lo))
        return F.log_softmax(log_mass, dim=-1)  # [B, Q, K]


def build_predictor(spec: PredictorSpec) -> nn.Module:
    """A freshly initialised GPO or Regression for `spec` (its randomness from torch's global generator)."""
    return GPO(spec) if spec.kind == "gpo" else Regression(spec)


def predictor_loss(
    model: nn.Module,
    context_x: Tensor,
    context_y: Tensor,
    context_mask: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    query_mask: Tensor,
) -> Tensor:
    """The training loss, a scalar: the mean over the real queries (query_mask [B, Q] bool) of
    GPO: -log p(query_y) under its log_probs; Regression: the Gaussian NLL of float(query_y) given (mu, sigma),
    `gaussian_nll_loss` without its constant (0.5 log 2 pi) and with its variance floor 1e-6.
    Shapes as in `GPO.forward`, plus query_y [B, Q] long in 1..K. No real query: 0 (not NaN)."""
    real = query_mask.to(query_x.dtype)  # [B, Q]
    if isinstance(model, Regression):
        mu, sigma = model.moments(query_x)  # [B, Q], [B, Q]
        per_query = F.gaussian_nll_loss(mu, query_y.to(mu.dtype), sigma**2, reduction="none")  # [B, Q]
    elif isinstance(model, GPO):
        log_probs = model(context_x, context_y, context_mask, query_x)  # [B, Q, K]
        target = torch.where(query_mask, query_y - 1, torch.zeros_like(query_y))  # [B, Q], 0-based
        per_query = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [B, Q]
    else:
        raise TypeError(f"predictor_loss: not a predictor from build_predictor: {type(model).__name__}")
    return (per_query * real).sum() / real.sum().clamp(min=1.0)


def expected_level(log_probs: Tensor) -> Tensor:
    """log_probs [..., K] -> [...]: sum_k k p_k with k = 1..K."""
    k = torch.arange(1, log_probs.shape[-1] + 1, device=log_probs.device, dtype=log_probs.dtype)  # [K]
    return (log_probs.exp() * k).sum(dim=-1)


def score01(log_probs: Tensor) -> Tensor:
    """log_probs [..., K] -> [...] in [0, 1]: (expected level - 1) / (K - 1), what a learned objective returns."""
    levels = log_probs.shape[-1]
    return ((expected_level(log_probs) - 1) / (levels - 1)).clamp(0.0, 1.0)
