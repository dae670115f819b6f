"""Plots and report.html from a real tiny run and from hand-written run directories; `firm report` on good and bad ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import firm
from firm.report import PLOTS, ReportError, load_run, report_table, write_plots, write_report
from tests.conftest import CliResult, firm_cli, tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OBJECTIVES = ["positiveness", "conciseness"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 rounds, evaluation every 2nd round (and the last): round 1 has "eval": null."""
    out = tmp_path_factory.mktemp("report")
    result = firm.run(tiny_config(out, "federation.rounds=3", "eval.every=2", "output.report=true", "output.name=r"))
    assert [m["eval"] is None for m in result.metrics] == [True, False, False]
    assert result.report == result.run_dir / "report.html"  # training writes the report itself
    return result.run_dir


def _copy_run(run_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("metrics.jsonl", "summary.json", "config.toml"):
        (dest / name).write_text((run_dir / name).read_text())
    return dest


def assert_valid_pngs(paths: list[Path]) -> None:
    import matplotlib.image

    assert [p.name for p in paths] == [f"{name}.png" for name in PLOTS]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and 5_000 < len(data) < 300_000, path
        image = matplotlib.image.imread(path)
        assert image.shape[0] >= 300 and image.shape[1] >= 600, path  # ~640 x 380 px at 100 dpi
        assert image.std() > 0.05, path  # lines and text, not an empty canvas


def test_training_writes_samples_plots_and_report(run_dir: Path) -> None:
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    assert {"prompt", "base", "final", "base_rewards", "final_rewards"} <= samples[0].keys()
    assert set(samples[0]["final_rewards"]) == set(OBJECTIVES)
    assert_valid_pngs([run_dir / "plots" / f"{name}.png" for name in PLOTS])
    assert (run_dir / "report.html").is_file()


def test_report_html_has_table_plots_config_and_escaped_samples(run_dir: Path, tmp_path: Path) -> None:
    copy = _copy_run(run_dir, tmp_path / "copy")
    row = {
        "prompt": "<script>alert(1)</script>",
        "base": "a & b",
        "final": "<b>x</b>",
        "base_rewards": {"positiveness": 0.25},
        "final_rewards": {"positiveness": 0.75},
    }
    (copy / "samples.jsonl").write_text(json.dumps(row) + "\n")

    html = write_report(copy).read_text()

    assert_valid_pngs(write_plots(copy))
    summary = json.loads((copy / "summary.json").read_text())
    for name in OBJECTIVES:
        base, final = summary["initial_eval"][name], summary["final_eval"][name]
        assert f">{base:.4f}<" in html and f">{final:.4f}<" in html and f">{final - base:+.4f}<" in html
    assert f">{summary['final_kl']:.4f}<" in html
    assert f"{summary['total_upload_bytes']:,} bytes" in html
    assert html.count('<img src="data:image/png;base64,') == len(PLOTS)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a &amp; b" in html and "&lt;b&gt;x&lt;/b&gt;" in html and "positiveness 0.750" in html
    assert "[federation]" in html  # the resolved config, verbatim


def test_report_table(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = report_table(run_dir).splitlines()
    assert lines[0].split() == ["objective", "base", "final", "change", "±", "se"]
    pos = next(line for line in lines if line.startswith("positiveness")).split()
    base, final = summary["initial_eval"]["positiveness"], summary["final_eval"]["positiveness"]
    assert pos[:4] == ["positiveness", f"{base:.4f}", f"{final:.4f}", f"{final - base:+.4f}"] and len(pos) == 5
    assert any(line.startswith("kl") for line in lines)
    assert any(line.startswith("bytes sent over 3 rounds: ") for line in lines)
    assert any(line.startswith("± se: standard error of the change, paired over the") for line in lines)


def test_report_cli(run_dir: Path, tmp_path: Path) -> None:
    proc = firm_cli("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert f"report: {run_dir / 'report.html'}" in proc.stdout and "conciseness" in proc.stdout


def _firm_report(path: Path) -> CliResult:
    return firm_cli("report", str(path))


def test_report_cli_errors(run_dir: Path, tmp_path: Path) -> None:
    for bad, expected in ((tmp_path, "no metrics.jsonl"), (tmp_path / "missing", "no such run directory")):
        proc = _firm_report(bad)
        assert proc.returncode == 2 and proc.stderr.startswith("firm: error: ") and expected in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    corrupt = _copy_run(run_dir, tmp_path / "corrupt")
    lines = (corrupt / "metrics.jsonl").read_text().splitlines()
    (corrupt / "metrics.jsonl").write_text(lines[0] + "\n{not json\n")
    proc = _firm_report(corrupt)
    assert proc.returncode == 2 and "metrics.jsonl: line 2 is not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_load_run_errors(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ReportError, match="no rounds recorded"):
        load_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n[1, 2]\n')
    with pytest.raises(ReportError, match="line 2 is not a JSON object"):
        load_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    (tmp_path / "samples.jsonl").write_text('{"prompt": "a"}\n\n{oops\n')
    with pytest.raises(ReportError, match=r"samples.jsonl: line 3 is not valid JSON"):
        load_run(tmp_path)


# ------------------------------------------------ hand-written run directories: shapes a tiny run does not produce


def _write_run(path: Path, rows: list[dict[str, Any]], summary: dict[str, Any] | None) -> Path:
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_many_clients_four_objectives_in_progress(tmp_path: Path) -> None:
    """16 clients (grey cloud + mean), M = 4 (one panel per objective), no summary.json yet (run in progress)."""
    names = ["a", "b", "c", "d"]
    rows = [
        {
            "round": r,
            "clients": list(range(16)),
            "eval": {n: 0.1 * r for n in names} if r % 2 == 0 else None,
            "kl": 0.01 * r if r % 2 == 0 else None,
            "train": {"reward": {n: 0.1 * r for n in names}},
            "weights": {str(c): [0.1 + 0.01 * c, 0.2, 0.3, 0.4 - 0.01 * c] for c in range(16)},
            "drift": {"weights": 0.05, "updates": 1.5},
            "comm": {"upload_bytes": 2_000_000, "download_bytes": 2_000_000},
        }
        for r in range(1, 7)
    ]
    run = _write_run(tmp_path / "run", rows, summary=None)
    html = write_report(run).read_text()
    assert_valid_pngs([run / "plots" / f"{name}.png" for name in PLOTS])
    assert "status unknown" in html and ">0.6000<" in html  # final = the last evaluated round
    table = report_table(run)
    assert "n/a" in table and "12.0 MB up" in table


def test_local_reference_spreads(tmp_path: Path) -> None:
    """The parent of a `local` reference run: eval and KL as {mean, std, min, max} over clients, nothing sent."""

    def spread(mean: float) -> dict[str, float]:
        return {"mean": mean, "std": 0.01, "min": mean - 0.02, "max": mean + 0.02}

    rows = [
        {
            "round": r,
            "clients": [0, 1],
            "eval": {n: spread(0.5 + 0.1 * r) for n in OBJECTIVES},
            "kl": spread(0.01 * r),
            "comm": {"upload_bytes": 0, "download_bytes": 0},
        }
        for r in (1, 2)
    ]
    summary = {
        "algorithm": "local",
        "reference": "local",
        "objectives": OBJECTIVES,
        "status": "completed",
        "rounds": 2,
        "clients": ["client_00"],
        "final_eval": {n: spread(0.7) for n in OBJECTIVES},
        "final_kl": spread(0.02),
        "total_upload_bytes": 0,
        "total_download_bytes": 0,
    }
    run = _write_run(tmp_path / "local", rows, summary)
    _write_run(run / "client_00", rows[:1], {"initial_eval": dict.fromkeys(OBJECTIVES, 0.5), "initial_kl": 0.0})
    write_report(run)
    assert_valid_pngs([run / "plots" / f"{name}.png" for name in PLOTS])
    pos = next(line for line in report_table(run).splitlines() if line.startswith("positiveness")).split()
    assert pos == ["positiveness", "0.5000", "0.7000", "+0.2000"]  # base from a client, final = mean over clients
