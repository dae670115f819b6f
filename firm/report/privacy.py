"""The privacy part of a run's report: the DP settings, epsilon after every round, why a run stopped (firm.privacy)."""

from __future__ import annotations

from html import escape
from typing import Any

from firm.report.load import Run


def _eps(value: Any) -> str:
    return "inf (no noise)" if value is None else f"{value:.4g}"


def privacy_lines(run: Run) -> list[str]:
    """What `firm train` prints about privacy at the end: one line, and one more when the budget stopped the run."""
    p = run.summary.get("privacy")
    if not p:
        return []
    lines = [
        f"privacy ({p['mode']} mode, clip {p['clip_norm']:g}, noise multiplier {p['noise_multiplier']:g}): "
        f"epsilon {_eps(p.get('epsilon'))} at delta {p['delta']:g} after {p['releases']} rounds"
        + (
            f"; each update alone, as the server sees it: epsilon {_eps(p.get('per_update_epsilon'))}"
            if "per_update_epsilon" in p
            else ""
        )
    ]
    if p.get("stopped"):
        lines.append(f"stopped: {p['stopped']}")
    return lines


def privacy_html(run: Run) -> list[str]:
    """The report page's privacy section: the settings, and epsilon per round."""
    p = run.summary.get("privacy")
    if not p:
        return []
    rows = [(m["round"], m["privacy"]) for m in run.metrics if m.get("privacy")]
    parts = [
        "<h2>Differential privacy</h2>",
        f"<p>{escape(' '.join(privacy_lines(run)))}. Accounting: {escape(p.get('accounting', ''))}.</p>",
        "<table><tr><th>round</th><th>updates in the sum</th><th>accounted noise multiplier</th><th>epsilon</th></tr>",
    ]
    for rnd, r in rows:
        noise = r.get("accounted_noise_multiplier")
        parts.append(
            f"<tr><td>{rnd}</td><td>{r['aggregated']}</td><td class=num>{'' if noise is None else f'{noise:.4g}'}</td>"
            f"<td class=num>{_eps(r.get('epsilon'))}</td></tr>"
        )
    parts.append("</table>")
    return parts
