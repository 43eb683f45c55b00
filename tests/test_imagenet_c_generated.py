"""ImageNet-C generated from val: ImageNet-C's crop, the engines' exact outputs, the precomputed task's metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cbbench import metrics
from cbbench.corruptions import catalog
from cbbench.corruptions.apply import clear_cache, corrupt_batch_cached
from cbbench.corruptions.engine import corrupt
from cbbench.corruptions.reference import reference_corrupt
from cbbench.data import classes
from cbbench.data.registry import load_dataset
from cbbench.data.imagenet import LAYOUTS
from cbbench.data.make_c import jpeg_roundtrip, make_c
from cbbench.tasks import TASKS
from cbbench.tasks import imagenet_c_generated as gen
from tests.conftest import task_context
from tests.test_imagenet import T32, save

WNIDS = classes.imagenet_wnids()


@pytest.fixture(autouse=True)
def _no_dataset_env(monkeypatch):
    for layout in LAYOUTS.values():
        monkeypatch.delenv(layout.env, raising=False)
    clear_cache()


@pytest.fixture(scope="module")
def val_root(tmp_path_factory):
    """Three decodable val images of different sizes (one textured, one grayscale) and one corrupt file."""
    root = tmp_path_factory.mktemp("genc")
    val = root / "imagenet" / "val"
    rng = np.random.default_rng(0)
    texture = np.clip(rng.normal([200, 60, 90], 25, size=(260, 300, 3)), 0, 255).astype(np.uint8)
    (val / WNIDS[3]).mkdir(parents=True)
    Image.fromarray(texture).save(val / WNIDS[3] / "a.JPEG", quality=95)  # textured: JPEG is lossy on it
    save(val / WNIDS[3] / "b_corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    save(val / WNIDS[7] / "c.JPEG", mode="L", size=(260, 340), red=90)
    save(val / WNIDS[500] / "d.JPEG", red=20, size=(256, 256))
    return root


class Recorder(nn.Module):
    """Remembers its inputs; predicts class 3 when the image is bright (red mean > 0.5), else class 7."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        logits = torch.zeros(len(x), 1000)
        logits[:, 3] = x[:, 0].mean(dim=(1, 2)) - 0.5
        logits[:, 7] = 0.5 - x[:, 0].mean(dim=(1, 2))
        return logits


def ctx_for(root, **kw):
    return task_context(None, batch_size=2, transform=T32, data_root=root, num_workers=0, **kw)


def test_cells_are_the_engine_applied_to_imagenet_c_crop_of_val(val_root):
    task = TASKS.get("imagenet_c_generated")
    assert task.own_dataset and task.engine == "cbbench-torch"
    small = gen.GeneratedImageNetCTask(corruptions=("contrast", "gaussian_noise"), holdout=(), severities=(2,))
    model = Recorder()
    result = small.evaluate(model, ctx_for(val_root, seed=5))
    # 1 clean pass (3 decodable images in 2 batches of 2 files, 32x32 through the model's transform), then one
    # pass at 224 evaluating both cells on each batch: (contrast, noise) of batch 0, then of batch 1
    clean, contrast, noise = model.seen[:2], model.seen[2:6:2], model.seen[3:6:2]
    assert [tuple(x.shape) for x in clean] == [(1, 3, 32, 32), (2, 3, 32, 32)]
    val = load_dataset("imagenet_val", val_root)
    val.num_workers = 0
    batches = list(val.batches(2, transform=gen.imagenet_c_crop()))
    assert [b[2].tolist() for b in batches] == [[0], [2, 3]]  # index 1 (the corrupt file) leaves a gap
    for (x, _, idx), got_contrast, got_noise in zip(batches, contrast, noise):
        assert x.shape[-2:] == (224, 224)
        # contrast is deterministic: the engine equals the reference within 1/255; the model saw the engine's
        # output after the published files' JPEG save (quality 85) and reload
        engine = corrupt(x, "contrast", 2, quantize=True)
        assert (engine - reference_corrupt(x, "contrast", 2)).abs().max() <= 1 / 255 + 1e-6
        assert torch.equal(got_contrast, jpeg_roundtrip(engine))
        # noise is reproducible from (run seed, first index of the batch)
        seed = int(np.random.SeedSequence([5, int(idx[0])]).generate_state(1)[0])
        want = corrupt(x, "gaussian_noise", 2, torch.Generator().manual_seed(seed), quantize=True)
        assert torch.equal(got_noise, jpeg_roundtrip(want))
    assert 0 < (contrast[0] - corrupt(batches[0][0], "contrast", 2, quantize=True)).abs().max() < 0.25  # JPEG
    m = result.metrics
    assert set(m) >= {"error/contrast/2", "accuracy/gaussian_noise/2", "mean_accuracy", "clean_error",
                      "corrupt_files_skipped", "nonfinite"}
    assert m["corrupt_files_skipped"] == 3.0  # the corrupt file, in the clean pass and in each of 2 cells
    assert any("generated from ImageNet val" in n for n in result.notes)
    assert any("b_corrupt.JPEG" in n for n in result.notes)
    assert "mce" not in m and any("mce / relative_mce not computed" in n for n in result.notes)
    assert "GENERATED" in small.protocol and "NO resize" not in small.protocol.split("error/")[0]


def test_full_grid_gives_the_mce_of_the_measured_errors(val_root, monkeypatch):
    """With corruptions that change nothing, every cell has the clean error: mCE follows by hand."""
    monkeypatch.setattr(gen, "corrupt_batch_cached", lambda dataset, x, idx, c, s, seed, engine: x)
    task = TASKS.get("imagenet_c_generated")
    result = task.evaluate(Recorder(), ctx_for(val_root))
    m = result.metrics
    labels = [3, 7, 500]  # bright a (class 3) right, dark grey c (class 7) right, dark d (class 500) wrong
    err = 1 / len(labels)
    for c in catalog.ALL_CORRUPTIONS:
        assert m[f"error/{c}/1"] == pytest.approx(err)
    want = np.mean([5 * err / sum(metrics.ALEXNET_ERR[c]) for c in catalog.BENCHMARK_CORRUPTIONS])
    assert m["mce"] == pytest.approx(want)
    assert m["mean_error"] == pytest.approx(err) and m["mean_accuracy"] == pytest.approx(1 - err)
    assert result.samples["correct"].tolist() == [1.0, 1.0, 0.0]
    assert result.samples["mce_contribution"].mean() == pytest.approx(m["mce"])


def test_reference_engine_variant_and_bad_engine():
    assert TASKS.get("imagenet_c_reference").engine == "imagecorruptions-1.1.2"
    with pytest.raises(ValueError, match="unknown corruption engine 'numpy'"):
        gen.GeneratedImageNetCTask(engine="numpy")


def test_missing_val_is_a_skip_with_the_tree(tmp_path):
    from cbbench.errors import DatasetMissingError

    with pytest.raises(DatasetMissingError, match=r"imagenet/val"):
        TASKS.get("imagenet_c_generated").evaluate(Recorder(), ctx_for(tmp_path))


def test_reference_engine_seeds_each_image_by_its_index_across_gaps():
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    full = corrupt_batch_cached("d", x, torch.arange(3), "gaussian_noise", 1, 4, "imagecorruptions-1.1.2")
    gap = corrupt_batch_cached("d", x[[0, 2]], torch.tensor([0, 2]), "gaussian_noise", 1, 4, "imagecorruptions-1.1.2")
    assert torch.equal(gap, full[[0, 2]])  # image 2 gets the noise of index 2 whether or not image 1 decoded


def test_make_c_writes_the_tree_the_precomputed_task_reads_with_the_generated_inputs(val_root, tmp_path):
    from cbbench.tasks.imagenet import ImageNetCTask

    out = tmp_path / "data" / "imagenet-c"
    ticks = []

    class Bar:
        def update(self, n):
            ticks.append(n)

        def close(self):
            pass

    counts = make_c(val_root / "imagenet" / "val", out, ["contrast", "gaussian_noise"], [2], seed=5,
                    batch_size=2, num_workers=0, progress=lambda total, desc: Bar())
    assert counts == {"written": 6, "existing": 0, "corrupt": 1} and sum(ticks) == 6
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.JPEG"))
    good = ((WNIDS[3], "a.JPEG"), (WNIDS[7], "c.JPEG"), (WNIDS[500], "d.JPEG"))
    assert files == sorted(f"{c}/2/{w}/{f}" for c in ("contrast", "gaussian_noise") for w, f in good)
    # The precomputed task on the written tree sees exactly the generated task's inputs (batches of the
    # torch engine are seeded by their first image, so this holds for the same batch size and a val
    # folder without undecodable files, whose gaps would shift the tree's batches).
    val = tmp_path / "data" / "imagenet" / "val"
    for w, f in good:
        (val / w).mkdir(parents=True, exist_ok=True)
        (val / w / f).hardlink_to(val_root / "imagenet" / "val" / w / f)
    out2 = tmp_path / "data2" / "imagenet-c"
    make_c(val, out2, ["contrast", "gaussian_noise"], [2], seed=5, batch_size=2, num_workers=0)
    (tmp_path / "data2" / "imagenet").symlink_to(tmp_path / "data" / "imagenet")
    cells = dict(corruptions=("contrast", "gaussian_noise"), holdout=(), severities=(2,))
    on_disk, generated = Recorder(), Recorder()
    a = ImageNetCTask(**cells).evaluate(on_disk, ctx_for(tmp_path / "data2", seed=5))
    b = gen.GeneratedImageNetCTask(**cells).evaluate(generated, ctx_for(tmp_path / "data2", seed=5))
    assert len(on_disk.seen) == len(generated.seen) == 6
    cell_by_cell = generated.seen[:2] + generated.seen[2::2] + generated.seen[3::2]  # generated: one pass
    for x, y in zip(on_disk.seen, cell_by_cell):
        assert torch.equal(x, y)
    assert a.metrics == b.metrics

    # Resumable: the batch of a lost file is made again for that cell, identically; other batches and cells
    # are left alone; other settings are refused.
    lost, neighbour = (out / "gaussian_noise" / "2" / WNIDS[7] / "c.JPEG", out / "gaussian_noise" / "2" / WNIDS[500]
                       / "d.JPEG")
    kept = [out / "contrast" / "2" / WNIDS[7] / "c.JPEG", out / "gaussian_noise" / "2" / WNIDS[3] / "a.JPEG"]
    before, stamps = lost.read_bytes(), [k.stat().st_mtime_ns for k in kept]
    lost.unlink()
    counts = make_c(val_root / "imagenet" / "val", out, ["contrast", "gaussian_noise"], [2], seed=5,
                    batch_size=2, num_workers=0)
    assert counts == {"written": 2, "existing": 4, "corrupt": 1}  # c and its batch-mate d, gaussian_noise only
    assert lost.read_bytes() == before and neighbour.is_file()
    assert [k.stat().st_mtime_ns for k in kept] == stamps
    with pytest.raises(ValueError, match=r"other settings \(seed: 5 then, 6 now\)"):
        make_c(val_root / "imagenet" / "val", out, ["contrast"], [2], seed=6, batch_size=2, num_workers=0)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        make_c(tmp_path / "nowhere", out, ["contrast"], [2])
