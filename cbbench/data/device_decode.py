"""JPEG decoding on the evaluation device (``cbbench run --decode gpu``): workers read bytes, the device decodes.

Why: with PIL, decoding + resizing an ImageNet val image costs ~11 ms of host CPU,
so a GPU that forwards 9,000 images/s waits on the host (issue 20). Here DataLoader
workers only read the encoded files; each batch is decoded with
``torchvision.io.decode_jpeg(..., device=...)`` (nvjpeg on a GPU, libjpeg on a CPU,
which is how the tests run it) and resized + center-cropped there with the model's
own eval transform (its Resize and CenterCrop, same size, interpolation and
crop_pct, antialiased as on PIL images), on uint8 like PIL, then scaled to [0, 1].

Files the device decoder refuses (a PNG named .JPEG, CMYK, some progressive files
on nvjpeg) are decoded with PIL for that file only and counted in
``DeviceDecoder.fallbacks``; files PIL cannot decode either are corrupt, exactly as
on the PIL path. Pixels differ slightly from the PIL path (other resize arithmetic;
docs/gpu_pipeline.md has the measured difference), so the choice is part of the
cell key.
"""
from __future__ import annotations

import io
from typing import Callable, Sequence

import torch

from cbbench.data.decode import decode_errors, load_rgb

#: Eval-transform steps that run on tensors as on PIL images (everything else must stay on the PIL path).
TENSOR_STEPS = ("Resize", "CenterCrop")


class EncodedFiles(torch.utils.data.Dataset):
    """index -> (the file's bytes as a uint8 tensor or None, label, index, error or None); runs in workers."""

    def __init__(self, paths: Sequence[str], labels: torch.Tensor):
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with open(self.paths[i], "rb") as f:
                data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        except OSError as exc:
            return None, int(self.labels[i]), i, f"{exc.__class__.__name__}: {exc}"
        return data, int(self.labels[i]), i, None


def collate_encoded(items):
    """(list of byte tensors, labels, indices, [(index, error)] of unreadable files)."""
    good = [it for it in items if it[3] is None]
    bad = [(it[2], it[3]) for it in items if it[3] is not None]
    return ([it[0] for it in good], torch.tensor([it[1] for it in good], dtype=torch.long),
            torch.tensor([it[2] for it in good], dtype=torch.long), bad)


def tensor_steps(transform: Callable | None) -> list[Callable]:
    """The eval transform's steps before its ToTensor, which must all be Resize / CenterCrop.

    timm's eval transform is Resize(scale, interpolation) + CenterCrop(size) + ToTensor;
    ImageNet-C's crop and ToTensor alone (precomputed ImageNet-C) fit too.
    """
    steps = list(getattr(transform, "transforms", [transform] if transform is not None else []))
    while steps and "ToTensor" in type(steps[-1]).__name__:
        steps.pop()
    odd = [type(s).__name__ for s in steps if type(s).__name__ not in TENSOR_STEPS]
    if odd:
        raise ValueError(f"--decode gpu runs the eval transform on the device and supports only "
                         f"{' + '.join(TENSOR_STEPS)} steps, not {', '.join(odd)}; use --decode cpu")
    return steps


class DeviceDecoder:
    """Decodes a batch of encoded files on ``device`` and applies the eval transform's steps there."""

    def __init__(self, transform: Callable | None, device: torch.device):
        self.steps = tensor_steps(transform)
        self.device = torch.device(device)
        self.fallbacks: dict[int, str] = {}  # sample index -> why the device decoder refused it

    def __call__(self, batch):
        data, y, idx, bad = batch
        images = self._decode(data, idx.tolist(), bad)
        keep = [j for j, im in enumerate(images) if im is not None]
        if not keep:
            return None, None, None, bad
        out = [self._transform(images[j]) for j in keep]
        shapes = sorted({tuple(im.shape) for im in out})
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes in one batch ({', '.join(map(str, shapes[:3]))}): the "
                             "eval transform must produce one size")
        return torch.stack(out).float() / 255, y[keep], idx[keep], bad

    def _decode(self, data: list[torch.Tensor], index: list[int], bad: list) -> list[torch.Tensor | None]:
        """uint8 (3, H, W) images on the device; None for corrupt files (added to ``bad``)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        try:  # one batched call: what makes nvjpeg fast
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            pass  # some file in the batch is not for this decoder: find it, one file at a time
        images = []
        for raw, i in zip(data, index):
            try:
                images.append(decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device))
                continue
            except RuntimeError as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            try:
                images.append(pil_decode(raw).to(self.device))
                self.fallbacks[i] = reason
            except decode_errors() as exc:
                images.append(None)
                bad.append((i, f"{exc.__class__.__name__}: {exc}"))
        return images

    def _transform(self, image: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            image = step(image)
        return image


def fallback_note(ds) -> list[str]:
    """The note on the files of ``ds`` the device decoder refused (decoded with PIL instead); [] when none."""
    fallbacks = ds.decode_fallbacks
    if not fallbacks:
        return []
    first = min(fallbacks)
    return [f"{ds.name}: {len(fallbacks)} file(s) the device JPEG decoder refused were decoded with PIL instead "
            f"(e.g. {ds.relpath(first)}: {fallbacks[first]})"]


def pil_decode(data: torch.Tensor) -> torch.Tensor:
    """The PIL path's decode (``convert("RGB")``) of encoded bytes, as a uint8 (3, H, W) tensor."""
    import numpy as np

    image = load_rgb(io.BytesIO(data.numpy().tobytes()))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


DECODE_CHOICES = ("auto", "cpu", "gpu")


def decode_on_device(choice: str, device: torch.device) -> bool:
    """``--decode``: cpu = PIL in DataLoader workers (the reference); gpu = on the CUDA device; auto = gpu
    exactly when the evaluation runs on CUDA."""
    if choice not in DECODE_CHOICES:
        raise ValueError(f"unknown --decode {choice!r}; use one of {', '.join(DECODE_CHOICES)}")
    on_cuda = torch.device(device).type == "cuda"
    if choice == "gpu" and not on_cuda:
        raise ValueError(f"--decode gpu needs a CUDA device (the evaluation runs on {device}); use --decode cpu "
                         "or auto")
    return choice == "gpu" or (choice == "auto" and on_cuda)
