"""bench/gpu_session.sh is run once per lent GPU, with no second chance: its --smoke mode (the same steps on
the CPU at toy sizes) must pass here, or the next GPU session is wasted."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("machine", "tests", "throughput", "decode", "corruptions")


def test_gpu_session_smoke(tmp_path, sample_images):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--smoke"], env=env, capture_output=True,
                          text=True, timeout=600)
    steps = (tmp_path / "steps.txt").read_text().splitlines()
    assert done.returncode == 0, (steps, done.stdout[-2000:], done.stderr[-2000:])
    assert [line.split(":")[0] for line in steps] == list(STEPS)
    assert all(": exit 0," in line for line in steps), steps
    assert "SMOKE RUN" in (tmp_path / "gpu.md").read_text()  # never mistaken for a measurement
    assert "real ImageNet sample images" in (tmp_path / "corruptions_cuda.md").read_text()
    tests = (tmp_path / "tests.log").read_text()
    assert re.search(r"\b\d+ passed", tests) and "failed" not in tests and "error" not in tests.lower(), tests
