"""A labelled dataset read from class folders of image files (ImageNet val, -C cells, A, R, Sketch, V2).

What it guarantees, because the numbers depend on it:

* a fixed sample order: class folders in a stated order (sorted names, or
  numerically for ImageNetV2's "0".."999"), files sorted by name inside each;
  sample index i is always the i-th file of that order, whatever the batch size
  or the number of DataLoader workers;
* labels from an explicit folder -> label table (e.g. wnid -> ImageNet index),
  never from the order in which folders happen to be enumerated;
* decoding with PIL and ``convert("RGB")`` (grayscale, CMYK, palette images work);
* a file that cannot be decoded is skipped and recorded (``corrupt``: sample
  index -> error), never a crash: the per-sample outcomes keep the original
  sample indices, so arrays stay aligned across models that saw the same files.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch

from cbbench.data.decode import decode_errors, load_rgb

log = logging.getLogger(__name__)

#: File name endings read as images (lower-cased before the comparison).
IMG_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


#: Environment variable that sets the DataLoader workers of file datasets (default: one per available core).
WORKERS_ENV = "CBBENCH_NUM_WORKERS"


def default_num_workers() -> int:
    """DataLoader workers when a dataset is not told otherwise: ``$CBBENCH_NUM_WORKERS``, else one per core
    this process may run on (``os.sched_getaffinity``: a container's or taskset's share, not the host's count).

    Not capped: a GPU forwards thousands of images per second, and each decoding worker
    gives it a few hundred (issue 20: 4 workers fed an H200 at 0.11 of its forward).
    """
    value = os.environ.get(WORKERS_ENV)
    if value:
        try:
            workers = int(value)
        except ValueError:
            workers = -1
        if workers < 0:
            raise ValueError(f"{WORKERS_ENV}={value!r}: give a number of DataLoader workers >= 0 (0: decode in "
                             "the main process)")
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def list_class_folders(root: Path) -> tuple[dict[str, list[str]], list[str]]:
    """({folder name: sorted image file names}, image files lying directly in ``root``).

    Hidden entries are ignored; nothing is decoded, nothing is stat'ed beyond
    what ``os.scandir`` gives.
    """
    folders: dict[str, list[str]] = {}
    loose: list[str] = []
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                with os.scandir(entry.path) as files:
                    folders[entry.name] = sorted(f.name for f in files if is_image_name(f.name) and not f.is_dir())
            elif is_image_name(entry.name):
                loose.append(entry.name)
    return folders, sorted(loose)


class _Files(torch.utils.data.Dataset):
    """index -> (image tensor or None, label, index, error or None); runs inside DataLoader workers."""

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, transform: Callable):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = load_rgb(self.paths[i])
        except decode_errors() as exc:
            return None, int(self.labels[i]), i, f"{exc.__class__.__name__}: {exc}"
        # The transform runs outside the try: a bug in it is an error, not a corrupt file.
        x = self.transform(image)
        if not (isinstance(x, torch.Tensor) and x.ndim == 3 and x.is_floating_point()):
            raise TypeError(f"the transform must return a float (C, H, W) tensor in [0, 1], got "
                            f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
        return x, int(self.labels[i]), i, None


def _collate(items):
    good = [it for it in items if it[3] is None]
    bad = [(it[2], it[3]) for it in items if it[3] is not None]
    if not good:
        return None, None, None, bad
    shapes = sorted({tuple(it[0].shape) for it in good})
    if len(shapes) > 1:
        raise ValueError(
            f"images of different sizes in one batch ({', '.join(map(str, shapes[:3]))}): pass a transform "
            "that produces one size (the model's eval transform). ToTensor alone only suits data that is "
            "already cropped to one size, such as ImageNet-C."
        )
    x = torch.stack([it[0] for it in good])
    y = torch.tensor([it[1] for it in good], dtype=torch.long)
    idx = torch.tensor([it[2] for it in good], dtype=torch.long)
    return x, y, idx, bad


def to_tensor_only():
    """PIL -> [0,1] float tensor, no resize or crop (the default; right for ImageNet-C's 224x224 files)."""
    from torchvision import transforms

    return transforms.ToTensor()


@dataclass(eq=False)
class ImageFolderDataset:
    """Image files in class folders, in a fixed order, with labels from an explicit table.

    ``paths`` are absolute file paths in sample order and ``labels`` their labels.
    ``class_subset`` (optional) holds the logit indices a model's outputs must be
    restricted to (ImageNet-A/R: their 200 classes' positions in the 1000), in
    label order. ``corrupt`` maps the sample index of every file found undecodable
    so far to the error; ``corrupt_files`` lists their paths.
    """

    name: str
    root: Path
    paths: list[str]
    labels: torch.Tensor
    num_classes: int
    description: str = ""
    class_subset: torch.Tensor | None = None
    num_workers: int = field(default_factory=default_num_workers)
    corrupt: dict[int, str] = field(default_factory=dict)
    # Files decoded with PIL because the device decoder refused them (``decode_device``): index -> why.
    decode_fallbacks: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def corrupt_files(self) -> list[str]:
        return [self.paths[i] for i in sorted(self.corrupt)]

    def corrupt_within(self, limit: int | None = None) -> list[int]:
        """Sample indices of corrupt files among the first ``limit`` samples (all when None), sorted."""
        n = len(self) if limit is None else min(limit, len(self))
        return sorted(i for i in self.corrupt if i < n)

    def relpath(self, i: int) -> str:
        return os.path.relpath(self.paths[i], self.root)

    def batches(self, batch_size: int, limit: int | None = None, transform=None, pin_memory: bool | None = None,
                only: Sequence[int] | None = None, decode_device: torch.device | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(images, labels, sample indices) in the fixed order; corrupt files are skipped and recorded.

        ``transform`` maps a PIL RGB image to a [0,1] float tensor; None means
        ToTensor only (no resize). A batch may be shorter than ``batch_size`` when it
        held corrupt files; a batch made only of corrupt files is not yielded.
        ``pin_memory``: page-locked batches, for non-blocking copies to a GPU (``run_batches`` asks
        for them only when evaluating on CUDA); None: whenever CUDA is available.
        ``only``: the numbers of the batches to read (of the single-process batch boundaries), the
        others are neither decoded nor yielded: a torchrun rank's share (``range(rank, n_batches,
        world)``), or what ``make-c`` still has to write. ``corrupt`` then holds the finds in
        those batches only (run_batches merges them across ranks).
        ``decode_device``: workers only read the files; each batch is decoded, resized and
        cropped on that device (data/device_decode.py; ``--decode gpu``); None: PIL in the workers.
        """
        n = len(self) if limit is None else min(limit, len(self))
        if n == 0:
            return
        transform = transform if transform is not None else to_tensor_only()
        decoder = None
        if decode_device is None:
            files, collate = _Files(self.paths, self.labels, transform), _collate
        else:
            from cbbench.data.device_decode import DeviceDecoder, EncodedFiles, collate_encoded

            decoder = DeviceDecoder(transform, decode_device)
            files, collate = EncodedFiles(self.paths, self.labels), collate_encoded
            pin_memory = False  # the decoder reads host bytes; its images are born on the device
        owned = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
        if only is not None:
            owned = [owned[i] for i in only]
        if not owned:
            return
        # Workers pay off from two batches on (decoding overlaps the model); one batch decodes in-process.
        workers = 0 if len(owned) == 1 else max(0, min(self.num_workers, len(owned)))
        loader = torch.utils.data.DataLoader(
            files, batch_sampler=owned, num_workers=workers, collate_fn=collate,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        )
        for batch in loader:
            x, y, idx, bad = batch if decoder is None else decoder(batch)
            if decoder is not None:
                self.decode_fallbacks.update(decoder.fallbacks)
            for i, error in bad:
                if i not in self.corrupt:
                    log.warning("%s: skipping undecodable image %s (%s)", self.name, self.paths[i], error)
                self.corrupt[i] = error
            if x is not None:
                yield x, y, idx

    def restrict(self, label_map: Mapping[int, int], name: str, num_classes: int,
                 class_subset: torch.Tensor | None = None, description: str = "") -> "ImageFolderDataset":
        """The samples whose label is in ``label_map``, relabelled through it, in the same relative order.

        E.g. ImageNet val restricted to ImageNet-A's 200 classes, labels 0..199.
        """
        keep = [i for i, y in enumerate(self.labels.tolist()) if y in label_map]
        return ImageFolderDataset(
            name=name, root=self.root, paths=[self.paths[i] for i in keep],
            labels=torch.tensor([label_map[int(self.labels[i])] for i in keep], dtype=torch.long),
            num_classes=num_classes, description=description, class_subset=class_subset,
            num_workers=self.num_workers,
        )


def reads_image_files(task, dataset) -> bool:
    """Whether a cell decodes image files (an ImageNet-style task, or a suite dataset read from folders): only
    there does the decoder change pixels, so only there does ``--decode gpu`` enter the cell key."""
    return task.own_dataset or isinstance(dataset, ImageFolderDataset)


def scan_image_folders(root: Path, label_of: Mapping[str, int], *, name: str, num_classes: int,
                       folder_sort_key: Callable[[str], object] = str, ignore_unknown: bool = False,
                       class_subset: torch.Tensor | None = None, description: str = "") -> ImageFolderDataset:
    """Build an ImageFolderDataset from ``root/<folder>/<image files>``.

    ``label_of`` maps a folder name to its label; folders it does not know raise
    ValueError (a wrong root, a stray folder) unless ``ignore_unknown``. Folders are
    ordered by ``folder_sort_key`` (``int`` for ImageNetV2), files by name.
    """
    folders, _ = list_class_folders(root)
    unknown = sorted(f for f in folders if f not in label_of)
    if unknown and not ignore_unknown:
        raise ValueError(
            f"{name}: {len(unknown)} folder(s) in {root} are not classes of this dataset "
            f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}); is this the right folder?"
        )
    paths: list[str] = []
    labels: list[int] = []
    for folder in sorted((f for f in folders if f in label_of), key=folder_sort_key):
        base = os.path.join(root, folder)
        paths += [os.path.join(base, f) for f in folders[folder]]
        labels += [label_of[folder]] * len(folders[folder])
    return ImageFolderDataset(name=name, root=Path(root), paths=paths, labels=torch.tensor(labels, dtype=torch.long),
                              num_classes=num_classes, description=description, class_subset=class_subset)
