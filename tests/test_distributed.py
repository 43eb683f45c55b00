"""torchrun with 2 CPU processes (gloo) gives exactly the single-process numbers; only rank 0 writes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from cbbench.store import Store

ARGS = ["run", "--suite", "robustness", "--models", "demo_vit", "demo_vit_cb", "--limit", "40", "--batch-size", "8",
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
    assert "terminate called" not in double.stderr, "a rank left with the process group still alive"
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


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo is tested on Linux")
def test_two_ranks_on_image_files_decode_their_own_batches_and_count_corrupt_files(tmp_path):
    """File datasets are sharded at the loader (each rank decodes only its batches); undecodable files found
    by any rank are reported once, and everything equals one process."""
    import timm
    import torch
    from PIL import Image

    from cbbench.data import classes

    val = tmp_path / "data" / "imagenet" / "val"
    wnids = classes.imagenet_wnids()
    for k in range(7):
        (val / wnids[k * 100]).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (60 + 10 * k, 50), (30 * k, 90, 200 - 20 * k)).save(val / wnids[k * 100] / f"{k}.JPEG")
    # sample 2 (wnids[100] holds 1.JPEG, zz_corrupt.JPEG): in batch 1 of 2 images, i.e. rank 1's under torchrun
    (val / wnids[100] / "zz_corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    torch.manual_seed(0)
    weights = tmp_path / "deit_tiny.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), weights)
    args = ["run", "--suite", "robustness_imagenet", "--tasks", "imagenet_clean", "--batch-size", "2",
            "--models", f"timm:deit_tiny_patch16_224@{weights}", "--data-root", str(tmp_path / "data")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(results, *prefix):
        cmd = [sys.executable, *prefix, "-m", "cbbench", *args, "--results", str(results)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        with Store(results) as store:
            run_id, _ = store.latest_run("robustness_imagenet")
            (cell,) = store.run_cells(run_id)
        return cell

    one = run(tmp_path / "single")
    two = run(tmp_path / "double", "-m", "torch.distributed.run", "--nproc_per_node", "2",
              "--master_port", str(free_port()))
    assert one.metrics == two.metrics and one.metrics["corrupt_files_skipped"] == 1.0
    assert one.metrics["images"] == 7.0 and one.provenance["notes"] == two.provenance["notes"]
    for name in one.samples:
        np.testing.assert_array_equal(one.samples[name], two.samples[name], err_msg=name)
