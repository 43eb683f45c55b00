"""The demo training recipe: deterministic, resumable, checkpoints with their log."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from cbbench.models.zoo import MODELS
from cbbench.train import RECIPES, Recipe, lr_at, random_shift, train

if "test_two_epochs" not in RECIPES:
    RECIPES.register("test_two_epochs", Recipe(dataset="digits", epochs=2))
SPEC = dataclasses.replace(MODELS.get("demo_vit"), name="t", recipe="test_two_epochs")


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_training_is_deterministic_and_resumes_to_the_same_weights(tmp_path):
    full = _weights(train(SPEC, tmp_path / "full.pth"))
    assert [e["epoch"] for e in full["log"]] == [1, 2] and full["log"][1]["loss"] < full["log"][0]["loss"]

    def stop_after_first_epoch(entry):
        if entry["epoch"] == 1:
            raise KeyboardInterrupt

    out = tmp_path / "resumed.pth"
    with pytest.raises(KeyboardInterrupt):
        train(SPEC, out, progress=stop_after_first_epoch)
    # The epoch-1 checkpoint is written before the callback runs, so the interrupted epoch is kept.
    assert not out.exists() and out.with_suffix(".partial.pth").exists()
    epochs_seen = []
    resumed = _weights(train(SPEC, out, progress=lambda e: epochs_seen.append(e["epoch"])))
    assert epochs_seen == [2], "resuming must not redo finished epochs"
    assert not out.with_suffix(".partial.pth").exists()
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_cb_twin_starts_from_identical_weights():
    from cbbench.models.build import build_network

    base, cb = build_network(MODELS.get("demo_vit")), build_network(MODELS.get("demo_vit_cb"))
    for (k, a), b in zip(base.state_dict().items(), cb.state_dict().values()):
        assert torch.equal(a, b), k


def test_schedule_and_shift():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(99, 100, 10, 1.0) < 0.001
    x = torch.zeros(3, 1, 8, 8)
    x[:, :, 4, 4] = 1
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and torch.all(shifted.sum(dim=(1, 2, 3)) == 1)
