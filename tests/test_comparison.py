"""Sweep comparison: plots, table and comparison.html from a real tiny sweep; `firm compare` on good and bad directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from firm.report import COMPARISON_PLOTS, comparison_table, load_sweep, write_comparison
from firm.report.compare_plots import _hv_by_round
from firm.sweep import Arm, sweep
from tests.conftest import firm_cli, tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALGORITHMS = ["firm", "fedavg", "fmgda"]
# fmgda steered: it reads the preference, so it too runs at every point (plain fmgda is one point: tests/test_sweep_seeds.py)
ARMS = ["firm", "fedavg", Arm("fmgda", ("algorithm.name=fmgda", "fmgda.steering=true"))]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 algorithms x 3 preferences (1/0, 0.5/0.5, 0/1), 2 rounds, then the comparison written once."""
    out = tmp_path_factory.mktemp("compare")
    config = tiny_config(out, "federation.rounds=2", "algorithm.local_steps=1", "output.name=sw")
    root = Path(sweep(config, ARMS, divisions=2)["path"])
    assert write_comparison(root) == root / "comparison.html"
    return root


def _copy_sweep(root: Path, dest: Path) -> Path:
    """The sweep's JSON files only (no adapters, plots or pages), to edit freely."""
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns("checkpoints", "final_adapter", "plots", "*.html", "*.png"))
    return dest


def _table_cells(table: str) -> dict[str, dict[str, str]]:
    """arm -> column -> cell of the fixed-width table (columns start where their header does)."""
    lines = table.splitlines()
    header = lines[0]
    names = header.split("  ")
    names = [n.strip() for n in names if n.strip()]
    starts = [header.index(n) for n in names] + [None]
    rows = {}
    for line in lines[2:]:
        if line.startswith(("rewards,", "together", "skipped", "not run")) or not line.strip():
            break
        cells = {n: line[starts[i] : starts[i + 1]].strip() for i, n in enumerate(names)}
        rows[cells["arm"]] = cells
    return rows


def test_every_plot_is_a_valid_non_blank_png(sweep_dir: Path) -> None:
    import matplotlib.image

    for name in COMPARISON_PLOTS:
        path = sweep_dir / "plots" / f"{name}.png"
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and 5_000 < len(data) < 400_000, path
        image = matplotlib.image.imread(path)
        assert image.shape[0] >= 380 and image.shape[1] >= 640, path
        assert image.std() > 0.05, path  # markers, lines and text, not an empty canvas
    html = (sweep_dir / "comparison.html").read_text()
    assert html.count("data:image/png;base64,") == len(COMPARISON_PLOTS)


def test_table_has_a_row_per_algorithm_with_the_sweep_figures(sweep_dir: Path) -> None:
    saved = json.loads((sweep_dir / "sweep.json").read_text())
    points = {p["run_dir"]: p for p in saved["points"]}
    rows = _table_cells(comparison_table(sweep_dir))
    assert list(rows) == ALGORITHMS
    for algorithm, row in rows.items():
        uniform = points[f"{algorithm}-p01"]  # (0.5, 0.5) is the grid point closest to uniform
        assert row["preference"] == "0.5/0.5" and row["points"] == "3/3"
        assert row["hypervolume"] == f"{saved['pareto']['hypervolume'][algorithm]:.4f}"
        assert row["positiveness"] == f"{uniform['final_eval']['positiveness']:.4f}"
        assert row["conciseness"] == f"{uniform['final_eval']['conciseness']:.4f}"
        assert int(row["upload bytes"].replace(",", "")) == uniform["total_upload_bytes"]
        assert row["drift.weights"] != "n/a" and row["drift.updates"] != "n/a"  # every federated run records drift
    # FMGDA uploads one adapter delta per objective: M = 2 times FIRM's bytes
    assert int(rows["fmgda"]["upload bytes"].replace(",", "")) == 2 * int(rows["firm"]["upload bytes"].replace(",", ""))

    html = (sweep_dir / "comparison.html").read_text()
    for hv in saved["pareto"]["hypervolume"].values():
        assert f"{hv:.4f}" in html
    assert saved["pareto"]["scales"] == [1.0, 1.0]  # fixed reference: the base model, the same in every run
    for ref in saved["pareto"]["reference"]:
        assert f"{ref:.6g}" in html
    assert "Hypervolume normalisation" in html and "Sweep config" in html and "&quot;divisions&quot;: 2" in html


def test_failed_missing_and_driftless_points_are_skipped_and_escaped(sweep_dir: Path, tmp_path: Path) -> None:
    root = _copy_sweep(sweep_dir, tmp_path / "sw")
    saved = json.loads((root / "sweep.json").read_text())
    error = "RuntimeError: <script>alert(1)</script> & more"
    failed = next(p for p in saved["points"] if p["run_dir"] == "fmgda-p02")
    failed.update(status="failed", final_eval=None)
    summary = json.loads((root / "fmgda-p02" / "summary.json").read_text())
    (root / "fmgda-p02" / "summary.json").write_text(json.dumps({**summary, "status": "failed", "error": error}))
    (root / "sweep.json").write_text(json.dumps(saved))
    shutil.rmtree(root / "fedavg-p00")
    # a run that records no drift (as the non-federated references): n/a, not an error
    rows = [json.loads(line) for line in (root / "fedavg-p01" / "metrics.jsonl").read_text().splitlines()]
    (root / "fedavg-p01" / "metrics.jsonl").write_text("".join(json.dumps({**r, "drift": None}) + "\n" for r in rows))
    summary = json.loads((root / "fedavg-p01" / "summary.json").read_text())
    summary.pop("final_drift")
    (root / "fedavg-p01" / "summary.json").write_text(json.dumps(summary))

    html = write_comparison(root).read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "fedavg-p00" in html and "no such run directory" in html
    table = comparison_table(root)
    cells = _table_cells(table)
    assert cells["fedavg"]["points"] == "2/3" and cells["fmgda"]["points"] == "2/3" and cells["firm"]["points"] == "3/3"
    assert cells["fedavg"]["drift.weights"] == "n/a" and cells["fedavg"]["drift.updates"] == "n/a"
    assert "skipped fmgda-p02: status failed" in table
    for name in COMPARISON_PLOTS:
        assert (root / "plots" / f"{name}.png").stat().st_size > 5_000


def test_hypervolume_per_round_is_the_improvement_over_the_base_model(sweep_dir: Path, tmp_path: Path) -> None:
    """Hand-set evals; the base model (round 0) is (0, 0) in every run, so it is the fixed reference, scale 1.

    firm   r2: (1, .5), (.5, 1)   -> HV = 1 * .5 + .5 * 1 - .5 * .5 = 0.75;  r1: (.5, 0), (0, .5) -> 0 (on the reference)
    fedavg r2: (.5, .5), (.5, .5) -> HV = .25, whatever the other algorithms reached (a pooled min-max
    normalisation would move it). Round 0 is the reference: HV 0. fedavg-p02 has no eval at round 1,
    so fedavg has no round 1. With one run's base different, it falls back to one normalisation of all.
    """
    root = _copy_sweep(sweep_dir, tmp_path / "sw")
    evals = {
        "firm-p00": [(0.5, 0.0), (1.0, 0.5)],
        "firm-p02": [(0.0, 0.5), (0.5, 1.0)],
        "fedavg-p00": [(0.5, 0.5), (0.5, 0.5)],
        "fedavg-p02": [None, (0.5, 0.5)],
    }
    names = ["positiveness", "conciseness"]
    saved = json.loads((root / "sweep.json").read_text())
    saved["points"] = [p for p in saved["points"] if p["run_dir"] in evals]
    for point in saved["points"]:
        run = root / point["run_dir"]
        per_round = [None if v is None else dict(zip(names, v, strict=True)) for v in evals[point["run_dir"]]]
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({**r, "eval": e}) + "\n" for r, e in zip(rows, per_round, strict=True))
        )
        summary = json.loads((run / "summary.json").read_text())
        summary.update(initial_eval=dict.fromkeys(names, 0.0), final_eval=per_round[-1])
        (run / "summary.json").write_text(json.dumps(summary))
        point["final_eval"] = per_round[-1]
    (root / "sweep.json").write_text(json.dumps(saved))

    hv, normalization = _hv_by_round(load_sweep(root))
    assert normalization is None
    assert hv["firm"] == pytest.approx({0: 0.0, 1: 0.0, 2: 0.75})
    assert hv["fedavg"] == pytest.approx({0: 0.0, 2: 0.25})
    assert "fmgda" not in hv or not hv["fmgda"]
    write_comparison(root)  # the points that are not run yet are listed, the rest drawn
    assert "not run yet: firm-p01, fedavg-p01, fmgda-p00" in comparison_table(root)
    summary_path = root / "fedavg-p00" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "initial_eval": dict.fromkeys(names, 0.1)}))
    hv, normalization = _hv_by_round(load_sweep(root))  # no common base: min-max over every eval, 0 to 1 here
    assert normalization is not None and normalization.lower == (0.0, 0.0) and normalization.upper == (1.0, 1.0)


def test_compare_cli(sweep_dir: Path, tmp_path: Path) -> None:
    proc = firm_cli("compare", str(sweep_dir))
    assert proc.returncode == 0, proc.stderr
    assert f"comparison: {sweep_dir / 'comparison.html'}" in proc.stdout
    assert all(f"\n{a} " in proc.stdout for a in ALGORITHMS) and "hypervolume" in proc.stdout
    for bad in (tmp_path, sweep_dir / "firm-p00", tmp_path / "nope"):
        proc = firm_cli("compare", str(bad))
        assert proc.returncode == 2 and proc.stderr.startswith("firm: error: ") and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_compare_runs_the_algorithms_then_writes_the_comparison(tmp_path: Path) -> None:
    args = [
        "compare", "--algorithms", "firm,fmgda", "--divisions", "1",
        "model.name=tiny", 'objectives.names=["positiveness", "conciseness"]', 'data.sources=["builtin"]',
        "data.partition=iid", "data.provocative_ratios=[]", "federation.num_clients=2", "federation.clients_per_round=1",
        "federation.rounds=1", "algorithm.local_steps=1", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=4", "eval.num_prompts=2", f'output.dir="{tmp_path.as_posix()}"', "output.name=cmp",
    ]  # fmt: skip
    proc = firm_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cmp" / "sweep.json").is_file() and (tmp_path / "cmp" / "comparison.html").is_file()
    assert "comparison:" in proc.stdout and "fmgda" in proc.stdout
