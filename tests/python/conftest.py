# The package under test is the build tree's (PYTHONPATH=<build>/python, set by ctest), and the CLI
# it compares with is that build's (FLOTILLA_CLI).
import json
import os
import subprocess

import pytest


@pytest.fixture
def trace():
    """`flotilla env trace` of one env as a list of its JSON lines."""

    def run(env_id, seed, actions, params=()):
        args = [os.environ["FLOTILLA_CLI"], "env", "trace", "--env", env_id, "--seed", str(seed), "--actions", json.dumps(actions)]
        for p in params:
            args += ["--param", p]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        return [json.loads(line) for line in out.splitlines()]

    return run
