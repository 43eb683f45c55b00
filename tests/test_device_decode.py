"""Device decoding (--decode gpu), run here on the CPU: workers read bytes, torchvision decodes, resizes and crops
with the model's eval transform; files the decoder refuses fall back to PIL, corrupt files stay corrupt."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from cbbench.data import classes, device_decode
from cbbench.data.folders import WORKERS_ENV, default_num_workers, scan_image_folders
from cbbench.data.make_c import imagenet_c_crop, jpeg_roundtrip
from cbbench.tasks.base import TaskContext, run_batches
from cbbench.tasks.context import Pipeline, RunSettings, pipeline_key

WNIDS = classes.imagenet_wnids()
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenet-sample"
DEIT = transforms.Compose([transforms.Resize(248, interpolation=transforms.InterpolationMode.BICUBIC),
                           transforms.CenterCrop(224), transforms.ToTensor()])  # timm's DeiT eval transform


def textured(size=(300, 260), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    """Sample order: a.JPEG (RGB), b.JPEG (grayscale), c.JPEG (a PNG in disguise), d.JPEG (CMYK),
    e.JPEG (progressive), f.JPEG (truncated: corrupt)."""
    root = tmp_path_factory.mktemp("decode")
    folder = root / WNIDS[1]
    folder.mkdir()
    textured().save(folder / "a.JPEG", quality=90)
    textured(seed=1).convert("L").save(folder / "b.JPEG", quality=90)
    textured(seed=2).save(folder / "c.JPEG", format="PNG")
    textured(seed=3).convert("CMYK").save(folder / "d.JPEG", quality=90)
    textured(seed=4).save(folder / "e.JPEG", quality=90, progressive=True)
    buf = io.BytesIO()
    textured(seed=5).save(buf, format="JPEG")
    (folder / "f.JPEG").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    ds = scan_image_folders(root, classes.wnid_to_index(), name="imagenet_val", num_classes=1000)
    ds.num_workers = 0
    return ds


def fresh(ds):
    return ds.restrict({y: y for y in range(1000)}, ds.name, 1000)


def batches(ds, **kw):
    got = list(ds.batches(3, transform=DEIT, **kw))
    return torch.cat([b[0] for b in got]), torch.cat([b[2] for b in got])


def test_device_decode_matches_the_pil_path_and_falls_back_to_pil_for_what_it_cannot_decode(odd_files):
    pil_ds, dev_ds = fresh(odd_files), fresh(odd_files)
    x_pil, idx_pil = batches(pil_ds)
    x_dev, idx_dev = batches(dev_ds, decode_device=torch.device("cpu"))
    assert idx_pil.tolist() == idx_dev.tolist() == [0, 1, 2, 3, 4]  # the truncated file is corrupt on both paths
    assert set(pil_ds.corrupt) == set(dev_ds.corrupt) == {5}
    assert list(dev_ds.decode_fallbacks) == [2] and "Not a JPEG" in dev_ds.decode_fallbacks[2]
    assert x_dev.shape == x_pil.shape == (5, 3, 224, 224) and x_dev.dtype == torch.float32
    assert torch.equal(x_dev * 255, (x_dev * 255).round())  # on the uint8 grid, like ToTensor of a PIL image
    diff = (x_dev - x_pil).abs()
    assert diff.mean() < 2 / 255 and diff.max() < 0.2  # other resize arithmetic, same images


def test_a_file_the_device_decoder_refuses_is_decoded_by_pil_for_that_file_only(odd_files, monkeypatch):
    """nvjpeg refuses CMYK (the CPU decoder does not): simulated by a decoder that refuses it; the batch's other
    files still come from the decoder, the CMYK one from PIL, exactly as on the PIL path."""
    from torchvision import io as tvio

    real = tvio.decode_jpeg

    def no_cmyk(data, *args, **kwargs):
        for d in data if isinstance(data, list) else [data]:
            if Image.open(io.BytesIO(d.numpy().tobytes())).mode == "CMYK":
                raise RuntimeError("nvjpeg: unsupported colour space")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(tvio, "decode_jpeg", no_cmyk)
    ds = fresh(odd_files)
    x, idx = batches(ds, decode_device=torch.device("cpu"))
    assert sorted(ds.decode_fallbacks) == [2, 3] and "colour space" in ds.decode_fallbacks[3]
    pil = DEIT(Image.open(odd_files.paths[3]).convert("RGB"))
    assert (x[3] - pil).abs().mean() < 2 / 255


def test_run_batches_decodes_on_the_device_when_asked_and_notes_the_fallbacks(odd_files):
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000)).eval()
    pil = run_batches(model, TaskContext(fresh(odd_files), RunSettings(batch_size=4), transform=DEIT))
    ctx = TaskContext(fresh(odd_files), RunSettings(batch_size=4, decode_on_device=True), transform=DEIT)
    dev = run_batches(model, ctx)
    assert dev["index"].tolist() == pil["index"].tolist() == [0, 1, 2, 3, 4]
    assert any("decoded with PIL instead" in n and "c.JPEG" in n for n in ctx.pipeline_notes)


def test_only_resize_and_center_crop_run_on_the_device():
    assert [type(s).__name__ for s in device_decode.tensor_steps(DEIT)] == ["Resize", "CenterCrop"]
    assert [type(s).__name__ for s in device_decode.tensor_steps(imagenet_c_crop())] == ["Resize", "CenterCrop"]
    assert device_decode.tensor_steps(transforms.ToTensor()) == []  # precomputed ImageNet-C: as stored
    with pytest.raises(ValueError, match="supports only Resize \\+ CenterCrop steps, not Grayscale"):
        device_decode.tensor_steps(transforms.Compose([transforms.Grayscale(3), transforms.ToTensor()]))


def test_decode_choice_and_cell_key():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not device_decode.decode_on_device("auto", cpu) and not device_decode.decode_on_device("cpu", cpu)
    assert device_decode.decode_on_device("auto", cuda) and device_decode.decode_on_device("gpu", cuda)
    assert not device_decode.decode_on_device("cpu", cuda)
    with pytest.raises(ValueError, match="--decode gpu needs a CUDA device"):
        device_decode.decode_on_device("gpu", cpu)
    with pytest.raises(ValueError, match="unknown --decode"):
        device_decode.decode_on_device("nvjpeg", cpu)
    # The default keeps the keys as they were; device decoding enters the key, beside a non-default pipeline
    assert pipeline_key(Pipeline(), False) is None
    assert pipeline_key(Pipeline(), True) == {"decode": "gpu"}
    bf16 = Pipeline(amp="bf16")
    assert pipeline_key(bf16, False) == bf16.describe()
    assert pipeline_key(bf16, True) == dict(bf16.describe(), decode="gpu")


def test_workers_follow_the_cores_available_unless_told(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert default_num_workers() == 16  # no cap at 4
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert default_num_workers() == 3
    monkeypatch.setenv(WORKERS_ENV, "many")
    with pytest.raises(ValueError, match="CBBENCH_NUM_WORKERS"):
        default_num_workers()


def test_jpeg_round_trip_on_the_device_is_the_same_codec_at_the_same_quality():
    x = torch.stack([transforms.ToTensor()(textured((224, 224), seed=s)) for s in range(2)])
    x = (x * 255).floor() / 255
    pil, dev = jpeg_roundtrip(x), jpeg_roundtrip(x, on_device=True)
    assert dev.shape == pil.shape and dev.dtype == pil.dtype
    assert (dev - pil).abs().max() <= 2 / 255  # libjpeg both; measured on real images in docs/gpu_pipeline.md


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"the ImageNet sample images are not at {SAMPLE}")
def test_device_decode_of_real_sample_images_is_close_to_the_pil_path():
    ds = scan_image_folders(SAMPLE, classes.wnid_to_index(), name="imagenet_val", num_classes=1000)
    ds.num_workers = 0
    got = [list(fresh(ds).batches(16, 32, transform=DEIT, **kw)) for kw in ({}, {"decode_device": torch.device("cpu")})]
    diff = torch.cat([(a[0] - b[0]).abs() for a, b in zip(*got)])
    assert diff.mean() < 1 / 255 and diff.max() < 0.1
