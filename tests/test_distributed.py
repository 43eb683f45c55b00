"""torchrun with 2 CPU processes (gloo) gives exactly the single-process numbers; only rank 0 writes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from cbbench.store import Store

ARGS = ["run", "--suite", "robustness", "--limit", "40", "--batch-size", "8",
        "--tasks", "clean", "corruptions", "pgd", "attention_entropy"]


def cli(results, checkpoints, *prefix):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CBBENCH_CKPT": str(checkpoints)}
    cmd = [sys.executable, *prefix, "-m", "cbbench", *ARGS, "--results", str(results)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cells(results):
    with Store(results) as store:
        run_id, _ = store.latest_run("robustness")
        return {(c.model, c.task): c for c in store.run_cells(run_id)}


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo is tested on Linux")
def test_two_ranks_match_one_process(tmp_path, demo_checkpoints):
    single = cli(tmp_path / "single", demo_checkpoints)
    assert single.returncode == 0, single.stderr[-2000:]
    double = cli(tmp_path / "double", demo_checkpoints, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_port", str(free_port()))
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("done in") == 1, "only rank 0 prints the summary"
    one, two = cells(tmp_path / "single"), cells(tmp_path / "double")
    assert one.keys() == two.keys() and len(one) == 8
    for key, cell in one.items():
        assert cell.metrics == two[key].metrics, key
        a, b = cell.samples, two[key].samples
        assert a.keys() == b.keys(), key
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{key} {name}")
    assert len(one[("demo_vit", "clean")].samples["index"]) == 40
    assert (tmp_path / "double" / "robustness.md").is_file()
