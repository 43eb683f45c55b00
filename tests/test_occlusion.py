"""patch_drop: the task added as one file plus one registry line (the task contract of issue 16)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cbbench.data.registry import load_dataset
from cbbench.tasks import TASKS, RunSettings, TaskContext
from cbbench.tasks.occlusion import PatchDropTask, drop_patches, patch_grid
from tests.conftest import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_image_loses_the_same_patches_whatever_its_batch():
    x = torch.rand(6, 3, 32, 32) + 0.1  # no zero pixels before the drop
    idx = torch.arange(10, 16)
    whole = drop_patches(x, idx, 0.5, (4, 4), seed=3)
    split = torch.cat([drop_patches(x[:2], idx[:2], 0.5, (4, 4), 3), drop_patches(x[2:], idx[2:], 0.5, (4, 4), 3)])
    assert torch.equal(whole, split)
    dropped = (whole == 0).all(dim=1).view(6, 4, 8, 4, 8).all(dim=(2, 4))  # whole 8x8 patches are black
    assert dropped.sum(dim=(1, 2)).tolist() == [8] * 6
    assert not torch.equal(dropped[0], dropped[1]), "images draw their own patches"
    assert not torch.equal(whole, drop_patches(x, idx, 0.5, (4, 4), seed=4))


def test_the_grid_is_the_models_patch_grid():
    assert patch_grid(tiny_vit(), 32, 32) == (4, 4)  # img 32, patch 8
    assert patch_grid(torch.nn.Identity(), 32, 32) == (8, 8)


def test_dropping_nothing_is_clean_accuracy_and_more_drop_is_reported_per_ratio():
    model = tiny_vit()
    ctx = TaskContext(load_dataset("digits"), RunSettings(batch_size=16, limit=48, seed=0))
    out = PatchDropTask(ratios=(0.0, 0.5)).evaluate(model, ctx)
    clean = TASKS.get("clean").evaluate(model, TaskContext(load_dataset("digits"), RunSettings(batch_size=16, limit=48)))
    assert out.metrics["accuracy/0.0"] == clean.metrics["accuracy"]
    assert out.samples["correct"].shape == (48, 2)
    assert out.metrics["mean_accuracy"] == pytest.approx(np.mean(out.samples["correct"]))
    assert out.notes == ["patch grid 4 x 4"]
    assert TASKS.get("patch_drop").kind == "corruption"
