"""Outcomes streamed into the store by the batch loop: an interrupted loop resumes from its stored batches.

Each test interrupts ``run_batches`` for real (its perturbation raises at a given
batch), then runs it again against the same store and checks that only the
missing batches are evaluated and that the outcomes equal an uninterrupted run.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cbbench.data.registry import load_dataset
from cbbench.data.folders import ImageFolderDataset
from cbbench.store import Store
from cbbench.tasks.context import CellStore, RunSettings
from cbbench.tasks.base import TaskContext, run_batches


class Interrupted(Exception):
    pass


def model_for(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, num_classes)).eval()


def store_context(store: Store, dataset, every_s: float = 0.0, **kw) -> TaskContext:
    """A context wired to ``store`` for one cell, as the runner wires it."""
    key = "cell"
    return TaskContext(dataset, RunSettings(**kw), CellStore(store, key, every_s))


def perturbation(seen: list[int], fail_at: int | None = None):
    """Records the batches it sees (by first sample index); raises at batch ``fail_at``; adds seeded noise
    so that a batch evaluated twice must give the same numbers for the same reason as the real tasks do."""

    def perturb(x, y, batch):
        first = int(batch.index[0])
        if fail_at is not None and len(seen) == fail_at:
            raise Interrupted(f"interrupted before the batch starting at sample {first}")
        seen.append(first)
        g = torch.Generator().manual_seed(first)
        return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return perturb


def assert_equal_outcomes(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_an_interrupted_loop_resumes_from_its_stored_batches_and_gives_the_uninterrupted_outcomes(tmp_path):
    digits = load_dataset("digits")
    model = model_for(digits.num_classes)
    want = run_batches(model, TaskContext(digits, RunSettings(batch_size=32)), perturbation([]), desc="noisy")

    with Store(tmp_path) as store:
        first: list[int] = []
        with pytest.raises(Interrupted):
            run_batches(model, store_context(store, digits, batch_size=32), perturbation(first, fail_at=5),
                        desc="noisy")
        assert first == [0, 32, 64, 96, 128]
        stored = store.get_parts("cell", "batches:noisy|")
        assert sum(len(c["index"]) for c in stored) == 5 * 32, "each finished batch must be in the store"

        second: list[int] = []
        got = run_batches(model, store_context(store, digits, batch_size=32), perturbation(second), desc="noisy")
    assert second == list(range(160, 360, 32)), "the rerun must evaluate only the batches not stored"
    assert_equal_outcomes(got, want)


def test_a_rerun_with_another_batch_size_does_not_reuse_the_stored_batches(tmp_path):
    digits = load_dataset("digits")
    model = model_for(digits.num_classes)
    with Store(tmp_path) as store:
        with pytest.raises(Interrupted):
            run_batches(model, store_context(store, digits, batch_size=32), perturbation([], fail_at=3), desc="x")
        seen: list[int] = []
        got = run_batches(model, store_context(store, digits, batch_size=50), perturbation(seen), desc="x")
    assert seen == list(range(0, 360, 50))
    assert_equal_outcomes(got, run_batches(model, TaskContext(digits, RunSettings(batch_size=50)), perturbation([]),
                                           desc="x"))


def test_writes_are_throttled_and_the_rest_is_written_when_the_loop_stops(tmp_path):
    digits = load_dataset("digits")
    model = model_for(digits.num_classes)
    with Store(tmp_path) as store:
        writes: list[int] = []
        ctx = store_context(store, digits, every_s=3600.0, batch_size=32)
        save = ctx.store.put
        ctx.store.put = lambda p, a: (writes.append(len(a["index"])), save(p, a))
        with pytest.raises(Interrupted):
            run_batches(model, ctx, perturbation([], fail_at=4), desc="slow")
        assert writes == [4 * 32], "one write: when the loop raised, with every batch finished before it"


def test_two_loops_of_one_task_with_the_same_name_are_refused(tmp_path):
    digits = load_dataset("digits")
    with Store(tmp_path) as store:
        ctx = store_context(store, digits, limit=8)
        run_batches(model_for(10), ctx, desc="clean")
        with pytest.raises(RuntimeError, match="both named 'clean'"):
            run_batches(model_for(10), ctx.with_run(limit=4), desc="clean")


def test_file_datasets_skip_decoding_stored_batches_and_keep_the_corrupt_files_found_before(tmp_path, monkeypatch):
    paths = []
    for i in range(10):
        path = tmp_path / "images" / f"c{i % 2}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (25 * i, 100, 250 - 20 * i)).save(path)
        paths.append(str(path))
    paths[1] = str(tmp_path / "images" / "c1" / "broken.png")  # in batch 0
    (tmp_path / "images" / "c1" / "broken.png").write_bytes(b"not an image")

    def dataset():
        return ImageFolderDataset("files", tmp_path / "images", list(paths), torch.tensor([i % 2 for i in range(10)]),
                                  2, num_workers=0)

    model = model_for(2)
    reference = dataset()
    want = run_batches(model, TaskContext(reference, RunSettings(batch_size=3)), perturbation([]), desc="files")
    assert list(reference.corrupt) == [1]

    asked: list = []
    original = ImageFolderDataset.batches

    def spy(self, *args, only=None, **kw):
        asked.append(None if only is None else list(only))
        return original(self, *args, only=only, **kw)

    monkeypatch.setattr(ImageFolderDataset, "batches", spy)
    with Store(tmp_path / "results") as store:
        with pytest.raises(Interrupted):
            run_batches(model, store_context(store, dataset(), batch_size=3), perturbation([], fail_at=2),
                        desc="files")
        fresh = dataset()
        got = run_batches(model, store_context(store, fresh, batch_size=3), perturbation([]), desc="files")
    assert asked == [[0, 1, 2, 3], [2, 3]], "the rerun must decode only batches 2 and 3"
    assert fresh.corrupt == reference.corrupt, "a corrupt file in a stored batch must still be reported"
    assert_equal_outcomes(got, want)


def test_a_cell_store_reads_and_writes_only_its_own_cell(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(3)}

    with Store(tmp_path) as store:
        mine, other = CellStore(store, "cell-a", 1.0), CellStore(store, "cell-b", None)
        assert mine.get_or_compute("part", compute)["x"].tolist() == [0, 1, 2]
        assert mine.get_or_compute("part", compute)["x"].tolist() == [0, 1, 2] and len(calls) == 1
        assert other.get("part") is None and other.get_all("pa") == []
        assert [p["x"].tolist() for p in mine.get_all("pa")] == [[0, 1, 2]]
    nothing = CellStore()  # a context without a store keeps nothing and streams nothing
    nothing.put("part", {"x": np.arange(3)})
    assert nothing.get("part") is None and nothing.stream_every_s is None
