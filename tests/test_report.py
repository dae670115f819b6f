"""Plots and report.html from real tiny runs; `firm report` on good and bad run directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import firm
from firm.report import PLOTS, ReportError, load_run, report_table, write_report
from tests.conftest import tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return firm.run(tiny_config(out, "federation.rounds=3", "output.name=r")).run_dir


def test_training_writes_samples_plots_and_report(run_dir: Path) -> None:
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    assert {"prompt", "base", "final", "base_rewards", "final_rewards"} <= samples[0].keys()
    assert set(samples[0]["final_rewards"]) == {"positiveness", "conciseness"}
    for name in PLOTS:
        data = (run_dir / "plots" / f"{name}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    html = (run_dir / "report.html").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['final_eval']['positiveness']:.4f}" in html
    assert html.count("data:image/png;base64,") == len(PLOTS)


def test_image_content_is_not_blank(run_dir: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(run_dir / "plots" / "eval_rewards.png")
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 0.05  # lines and text, not an empty canvas


def test_samples_are_escaped(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("metrics.jsonl", "summary.json", "config.toml"):
        (copy / name).write_text((run_dir / name).read_text())
    row = {"prompt": "<script>alert(1)</script>", "base": "a & b", "final": "<b>x</b>", "base_rewards": {}, "final_rewards": {}}
    (copy / "samples.jsonl").write_text(json.dumps(row) + "\n")
    html = write_report(copy).read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html and "a &amp; b" in html


def test_rounds_without_eval_are_skipped(tmp_path: Path) -> None:
    result = firm.run(tiny_config(tmp_path, "federation.rounds=3", "eval.every=2"))
    assert [m["eval"] is None for m in result.metrics] == [True, False, False]
    assert result.report is not None and result.report.is_file()
    table = report_table(result.run_dir)
    assert "positiveness" in table and "bytes sent" in table


def test_report_cli(run_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "firm", "report", str(run_dir)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "report: " in proc.stdout and "conciseness" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "firm", "report", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert bad.returncode == 2 and bad.stderr.startswith("firm: error: ") and "Traceback" not in bad.stderr


def test_corrupt_metrics_line_is_named(tmp_path: Path, run_dir: Path) -> None:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n{not json\n")
    with pytest.raises(ReportError, match=r"metrics.jsonl: line 2 is not valid JSON"):
        load_run(tmp_path)
