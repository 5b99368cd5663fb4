# flotilla.run and flotilla.read_metrics: runs driven from Python.
import json
import os
from pathlib import Path

import pytest

import flotilla

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_run_returns_its_directory_summary_and_metrics(tmp_path):
    run = flotilla.run(CONFIGS / "cartpole_ppo.yaml", {"train.total_steps": 4096, "metrics.sinks": ["jsonl"]}, quiet=True, cwd=tmp_path)
    assert run.dir.is_dir() and run.dir.parent == tmp_path / "runs"
    assert run.summary["exit_reason"] == "completed"
    assert run.summary == json.loads((run.dir / "summary.json").read_text())
    rows = run.metrics()
    assert [r["step"] for r in rows] == [1024, 2048, 3072, 4096]
    assert all("charts/episodic_return" in r for r in rows)
    frame = flotilla.read_metrics(run.dir, frame=True)
    assert list(frame["step"]) == [1024, 2048, 3072, 4096]


def test_a_failing_run_raises_with_the_reason(tmp_path):
    with pytest.raises(flotilla.RunError, match="train.total_stepz") as e:
        flotilla.run(CONFIGS / "cartpole_ppo.yaml", {"train.total_stepz": 10}, quiet=True, cwd=tmp_path)
    assert e.value.returncode != 0
    with pytest.raises(FileNotFoundError, match="no experiment file"):
        flotilla.run(tmp_path / "missing.yaml")
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        flotilla.read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        flotilla.read_metrics(tmp_path)


def test_the_cli_is_found_from_the_environment():
    assert flotilla.cli_path() == os.environ["FLOTILLA_CLI"]
