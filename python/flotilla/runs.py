"""Flotilla runs from Python: start one with the `flotilla` command and read what it wrote."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


class RunError(RuntimeError):
    """A run that ended with an error; `run_dir` (when it got that far) and `returncode` say where."""

    def __init__(self, message, run_dir=None, returncode=None):
        super().__init__(message)
        self.run_dir = run_dir
        self.returncode = returncode


def cli_path():
    """The `flotilla` executable: $FLOTILLA_CLI, the package's own (pip install), the build tree's
    (this package in build/<preset>/python), or the one on PATH."""
    if os.environ.get("FLOTILLA_CLI"):
        return os.environ["FLOTILLA_CLI"]
    here = Path(__file__).resolve().parent
    for candidate in (here / "bin" / "flotilla", here.parent.parent / "bin" / "flotilla"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("flotilla")
    if found:
        return found
    raise FileNotFoundError("no flotilla executable: set FLOTILLA_CLI, or build Flotilla (scripts/flotilla builds it)")


class Run:
    """A finished run: its directory, its summary.json, and its metrics."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        summary = self.dir / "summary.json"
        self.summary = json.loads(summary.read_text()) if summary.exists() else {}

    def metrics(self, frame=False):
        return read_metrics(self.dir, frame=frame)

    def __repr__(self):
        return f"flotilla.Run({str(self.dir)!r}, exit_reason={self.summary.get('exit_reason')!r})"


def _override_text(key, value):
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (list, dict)):
        value = json.dumps(value)  # YAML's flow style reads JSON
    return f"{key}={value}"


_RUN_DIR = re.compile(r"\] \[info\] run directory (.+)$")


def run(config, overrides=None, *, quiet=False, cwd=None):
    """Runs the experiment `config` (a YAML path) with `overrides` ({"train.total_steps": 20000,
    ...}) as `flotilla run` does, printing its progress lines to stderr unless `quiet`, and returns
    the finished `Run`. A run that fails raises RunError with the command's last error lines."""
    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"no experiment file {config}")
    args = [cli_path(), "run", "--progress", "lines", str(config)]
    args += [_override_text(k, v) for k, v in (overrides or {}).items()]
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # libtorch runs its own threads
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    run_dir, tail = None, []
    for line in proc.stdout:
        line = line.rstrip("\n")
        match = _RUN_DIR.search(line)
        if match and run_dir is None:
            run_dir = Path(cwd or ".") / match.group(1)
        tail = (tail + [line])[-20:]
        if not quiet:
            print(line, file=sys.stderr, flush=True)
    code = proc.wait()
    if code != 0:
        errors = [l for l in tail if "error" in l.lower()] or tail
        raise RunError(f"flotilla run {config} failed (exit {code}):\n" + "\n".join(errors[-8:]), run_dir, code)
    if run_dir is None:
        raise RunError(f"flotilla run {config} named no run directory", None, code)
    return Run(run_dir)


def read_metrics(run_dir, frame=False):
    """A run's metrics.jsonl as a list of dicts (one per logged step), or as a pandas DataFrame
    when `frame` is true (pandas must be installed)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl here; is this a run directory (with the jsonl sink on)?")
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not a JSON object: {e}") from None
    if not frame:
        return rows
    try:
        import pandas
    except ImportError:
        raise ImportError("read_metrics(frame=True) needs pandas; without it, read_metrics() gives a list of dicts") from None
    return pandas.DataFrame(rows)
