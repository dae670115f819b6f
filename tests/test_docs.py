"""The docs say what the code does: the palette's privacy account, and every default value a page quotes."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from firm.config import Config, config_to_dict
from firm.rewards.config import RewardConfig, reward_config_to_dict

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])


def _flat(path: Path) -> str:
    """The text with every run of whitespace (line breaks included) as one space."""
    return " ".join(path.read_text(encoding="utf-8").split())


# --------------------------------------------------------------------------- the palette's statistics

FALSE_CLAIMS = [
    "never send a reward",
    "never sends a reward",
    "never a reward",
    "never rewards",
    "never sees a reward",
    "rewards never leave",
    "rewards themselves and the prompts stay put",
    "no single sample is sent",
    "other sample's reward leaves",
]
"""Claims that the palette keeps rewards from the server: false, since its answers reveal them (tests/test_palette_math.py, section 10)."""


def test_no_page_or_docstring_claims_the_palette_keeps_rewards_from_the_server() -> None:
    sources = [*PAGES, *(ROOT / "firm" / "palette").glob("*.py"), *(ROOT / "firm" / "engines" / "flower").glob("*.py")]
    found = [
        (path.relative_to(ROOT).as_posix(), claim) for path in sources for claim in FALSE_CLAIMS if claim in _flat(path).lower()
    ]
    assert found == []


def test_the_palette_page_states_what_the_server_can_learn() -> None:
    page = _flat(ROOT / "docs" / "palette.md")
    for statement in (
        "bisection",  # count_at_most at thresholds of the server's choosing
        "every reward value",
        "max_i lambda^T r_i",  # the shift
        "whole reward vector",  # a hard tilt
        "not a privacy guarantee",
    ):
        assert statement in page, statement


# --------------------------------------------------------------------------- default values quoted by the docs

KEY = re.compile(r"`([a-z_]+\.[a-z_]+)`")
TICKED = re.compile(r"`([^`]*)`")
INLINE_DEFAULT = re.compile(r"`([a-z_]+\.[a-z_]+)`[^`|()]{0,40}\(default:? ((?:`[^`]*`(?:, )?)+|[^;),` ]+)")
INLINE_THE_DEFAULT = re.compile(r"`([a-z_]+\.[a-z_]+)=([^`]*)` \(the default\)")


def _defaults(page: str = "") -> dict[str, Any]:
    """Every leaf of the default config by dotted key, as plain data (tuples as lists): the reward-learning config's
    for the reward pages (`firm reward train`), the policy config's for the others."""
    tree = reward_config_to_dict(RewardConfig()) if _is_reward_page(page) else config_to_dict(Config())
    return {f"{section}.{name}": value for section, fields in tree.items() for name, value in fields.items()}


def _is_reward_page(page: str) -> bool:
    return page.startswith("docs/rewards/") or page == "docs/algorithms/plural-rewards.md"


def _value(text: str) -> Any:
    """A value as the docs write it: a TOML value (`5e-3`, `"adam"`, `[]`, `true`), else the bare word."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _default_tables(path: Path) -> list[tuple[int, str, str]]:
    """(line, key cell, default cell) of every row of every table whose header has a `default` column."""
    rows: list[tuple[int, str, str]] = []
    column: int | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            column = None
        elif column is None:
            column = cells.index("default") if "default" in cells else None
        elif not set(line.strip()) <= set("|-: "):
            rows.append((number, cells[0], cells[column]))
    return rows


def quoted_defaults() -> tuple[list[tuple[str, str, Any]], list[str]]:
    """(where, dotted key, the default the docs give) for every default a page quotes (tables and inline `(default x)`),
    and the table rows that cannot be checked.

    A table row must name its keys in full (`algorithm.lr`) and give one backticked value per key,
    so that nothing in a defaults table escapes the comparison.
    """
    quoted: list[tuple[str, str, Any]] = []
    unreadable: list[str] = []
    for path in PAGES:
        page = path.relative_to(ROOT).as_posix()
        for number, key_cell, default_cell in _default_tables(path):
            keys, values = KEY.findall(key_cell), TICKED.findall(default_cell)
            if not keys or len(values) != len(keys):
                unreadable.append(
                    f"{page}:{number}: name each key in full and give one `value` per key: {key_cell} | {default_cell}"
                )
                continue
            quoted += [(f"{page}:{number}", key, _value(value)) for key, value in zip(keys, values, strict=True)]
        text = _flat(path)
        for key, raw in INLINE_DEFAULT.findall(text):
            ticked = TICKED.findall(raw)
            value = [_value(v) for v in ticked] if len(ticked) > 1 else _value(ticked[0] if ticked else raw)
            quoted.append((f"{page} (inline)", key, value))
        quoted += [(f"{page} (inline)", key, _value(raw)) for key, raw in INLINE_THE_DEFAULT.findall(text)]
    return quoted, unreadable


def test_every_default_a_page_quotes_is_the_configs() -> None:
    quoted, unreadable = quoted_defaults()
    wrong = unreadable + [
        f"{where}: {key} = {value!r}, the config says {defaults.get(key, 'no such key')!r}"
        for where, key, value in quoted
        if key not in (defaults := _defaults(where.split(":")[0].split(" ")[0])) or value != defaults[key]
    ]
    assert wrong == [], "\n".join(wrong)
    assert len(quoted) >= 60, len(quoted)  # the tables were found: a format change must not empty the check


def test_the_defaults_check_catches_a_drifted_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        '| key | default | role |\n|---|---|---|\n| `algorithm.lr`, `algorithm.optimizer` | `5e-3`, `"adam"` | x |\n\n'
        "Uses `engine.round_timeout` (default 600) and `model.device=auto` (the default).\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PAGES", [page])
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert quoted_defaults() == (
        [
            ("page.md:3", "algorithm.lr", 5e-3),
            ("page.md:3", "algorithm.optimizer", "adam"),
            ("page.md (inline)", "engine.round_timeout", 600),
            ("page.md (inline)", "model.device", "auto"),
        ],
        [],
    )
    assert _defaults()["algorithm.lr"] != 5e-3  # so the first row is what the comparison reports


def test_the_readme_says_next_to_the_demo_figures_what_varies_across_machines() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    figures = text.index("objective         base   final   change")
    after = " ".join(text[figures : figures + 2500].split())
    for statement in ("same seed reproduces every figure exactly", "On another machine", "number of threads", "OpenBLAS"):
        assert statement in after, statement
