# python/examples/cartpole_ppo.py trains through flotilla.make_vec: a short run must learn (a random
# policy's episodes average about 22 steps).
import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "python" / "examples" / "cartpole_ppo.py"


def test_the_ppo_example_learns_cartpole():
    r = subprocess.run([sys.executable, str(EXAMPLE), "--total-steps", "100000", "--target", "150"], capture_output=True, text=True,
                       env=dict(os.environ), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reached a 20-episode mean of" in r.stdout
