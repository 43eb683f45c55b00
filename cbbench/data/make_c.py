"""Making ImageNet-C from ImageNet val the way the published set was made, on disk or in memory.

Hendrycks & Dietterich's make_imagenet_c.py cut each val image with Resize(256) +
CenterCrop(224) (bilinear), corrupted it at 224x224, truncated it to uint8
(``np.uint8``) and saved it as JPEG with ``quality=85, optimize=True``. The same
steps here, with cbbench's corruption engines:

* ``imagenet_c_crop()``: the crop, used by the on-the-fly task and by ``make_c``;
* ``jpeg_roundtrip()``: the save-and-reload, so on-the-fly inputs carry the
  published files' JPEG artefacts too;
* ``make_c()`` (``cbbench datasets make-c``): writes a tree in ImageNet-C's layout
  ``<out>/<corruption>/<severity>/<wnid>/<file>.JPEG`` that the ``imagenet_c`` task
  reads. Resumable: files are written atomically and a batch whose files all exist
  is skipped; ``<out>/make_c.json`` records the settings, and resuming with other
  settings is refused, since the random draws depend on them.

Randomness: the torch engine seeds each batch from (seed, index of its first
image), the reference seeds each image from (seed, its index), exactly as the
on-the-fly tasks do; with the same seed and batch size, evaluating the written tree
gives the same inputs as ``imagenet_c_generated``.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from cbbench.corruptions.catalog import TORCH_ENGINE
from cbbench.corruptions.apply import check_engine, corrupt_batch

JPEG_SETTINGS = {"quality": 85, "optimize": True}


def imagenet_c_crop():
    """Resize(256) + CenterCrop(224), bilinear: how ImageNet-C's images were cut from val."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BILINEAR),
                               transforms.CenterCrop(224), transforms.ToTensor()])


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, rounding (inputs are already on the uint8 grid)."""
    return (x.detach().cpu().float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def jpeg_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", **JPEG_SETTINGS)
    return buf.getvalue()


def jpeg_roundtrip(x: torch.Tensor, on_device: bool = False) -> torch.Tensor:
    """Save each image as the published ImageNet-C files were saved, and decode it again.

    PIL on the host is the reference. ``on_device`` (``--decode gpu``): torchvision's
    encode_jpeg/decode_jpeg at the same quality on ``x``'s device instead (nvjpeg on a
    GPU), which saves a copy to the host and a per-image CPU codec; its pixels differ
    slightly from PIL's (docs/gpu_pipeline.md), so it is part of the cell key.
    """
    if on_device:
        from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

        u8 = (x.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)
        data = [d.cpu() for d in encode_jpeg(list(u8), quality=JPEG_SETTINGS["quality"])]  # decode reads host bytes
        return torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB, device=x.device)).to(x.dtype) / 255
    from PIL import Image

    out = [np.asarray(Image.open(io.BytesIO(jpeg_bytes(im))).convert("RGB")) for im in _to_uint8(x)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255


def _settings(out: Path, settings: dict) -> None:
    """Record the settings of a tree, or refuse to add to a tree made with other ones."""
    path = out / "make_c.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            diff = {k: (old.get(k), settings.get(k)) for k in set(old) | set(settings) if old.get(k) != settings.get(k)}
            raise ValueError(f"{out} was made with other settings ({', '.join(f'{k}: {a!r} then, {b!r} now' for k, (a, b) in sorted(diff.items()))}); "
                             "resuming would mix random draws: use the same settings or another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def make_c(src: str | Path, out: str | Path, corruptions: Sequence[str], severities: Sequence[int], *,
           engine: str = TORCH_ENGINE, seed: int = 0, batch_size: int = 64, limit: int | None = None,
           device: str | torch.device = "cpu", num_workers: int | None = None,
           progress: Callable[[int, str], object] | None = None) -> dict[str, int]:
    """Write ImageNet-C cells for the val folder ``src`` into ``out``; counts of written / existing / corrupt files."""
    from cbbench.data import classes
    from cbbench.data.folders import scan_image_folders

    check_engine(engine)
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src} is not a folder; give the ImageNet val folder (<wnid>/<file>.JPEG)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (created if missing), e.g. <data root>/imagenet-c")
    a, b = src.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ValueError(f"--out {out} and --src {src} overlap; writing there would mix corrupted images into the "
                         "val folder (or read them back as val): choose an --out outside --src, e.g. "
                         "<data root>/imagenet-c")
    val = scan_image_folders(src, classes.wnid_to_index(), name="imagenet_val", num_classes=1000)
    if len(val) == 0:
        raise FileNotFoundError(f"--src {src} holds no images in wnid folders (<wnid>/<file>.JPEG)")
    if num_workers is not None:
        val.num_workers = num_workers
    _settings(out, {"source": str(src.resolve()), "engine": engine, "seed": seed, "batch_size": batch_size,
                    "crop": "Resize(256, bilinear) + CenterCrop(224)", "jpeg": JPEG_SETTINGS})
    n = len(val) if limit is None else min(limit, len(val))
    targets = [(c, s) for c in corruptions for s in severities]
    counts = {"written": 0, "existing": 0, "corrupt": 0}
    bar = progress(n * len(targets), "make-c") if progress else None
    device = torch.device(device)

    def dest(c: str, s: int, i: int) -> Path:
        return out / c / str(s) / val.relpath(i)

    # Batches whose files all exist are not even decoded (resuming a 50,000-image tree costs stats only).
    todo = [b for b, start in enumerate(range(0, n, batch_size))
            if not all(dest(c, s, i).is_file() for c, s in targets for i in range(start, min(start + batch_size, n)))]
    counts["existing"] = (n - sum(min(batch_size, n - b * batch_size) for b in todo)) * len(targets)
    if bar:
        bar.update(counts["existing"])
    for x, _, idx in val.batches(batch_size, n, transform=imagenet_c_crop(), only=todo):
        x = x.to(device)
        for c, s in targets:
            if all(dest(c, s, int(i)).is_file() for i in idx):
                counts["existing"] += len(idx)
            else:
                images = _to_uint8(corrupt_batch(x, idx, c, s, seed, engine))
                for i, image in zip(idx.tolist(), images):
                    _write_atomic(dest(c, s, i), jpeg_bytes(image))
                counts["written"] += len(idx)
            if bar:
                bar.update(len(idx))
    counts["corrupt"] = len(val.corrupt_within(n))
    if bar:
        bar.close()
    return counts
