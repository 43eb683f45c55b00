"""The ImageNet-scale evaluation sets read from disk: val, -C (precomputed), -A, -R, Sketch, V2.

Where each one is looked for (first match wins):

    environment variable (the dataset's own folder)   else   <data root>/<sub-folder>

    dataset          sub-folder under the data root               environment override
    imagenet_val     imagenet/val                                  CBBENCH_IMAGENET_VAL
                     (imagenet_val_rb5000: RobustBench's 5,000 listed files of the same folder)
    imagenet_c       imagenet-c                                    CBBENCH_IMAGENET_C
    imagenet_a       imagenet-a                                    CBBENCH_IMAGENET_A
    imagenet_r       imagenet-r                                    CBBENCH_IMAGENET_R
    imagenet_sketch  imagenet-sketch                               CBBENCH_IMAGENET_SKETCH
    imagenet_v2      imagenetv2-matched-frequency-format-val       CBBENCH_IMAGENET_V2

The data root is ``--data-root`` / ``CBBENCH_DATA`` (cbbench.paths.data_root).
A missing dataset raises DatasetMissingError naming the expected tree and the
dataset card (datasets/<name>.md) that says how to get and prepare it.

Labels: val, -C and Sketch folders are wnids mapped through the 1000-class table
(cbbench/data/classes); A and R folders are wnids mapped to their position 0..199
in the dataset's sorted 200-wnid list, and the dataset carries ``class_subset``
(those wnids' positions in the 1000) for the logit mask; V2's folders "0".."999"
are class indices, ordered numerically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cbbench.corruptions.catalog import ALL_CORRUPTIONS
from cbbench.data import classes
from cbbench.data.folders import ImageFolderDataset, list_class_folders, scan_image_folders
from cbbench.errors import DatasetMissingError

@dataclass(frozen=True)
class Layout:
    """Where a dataset lives and what its tree looks like (for messages, the checker and the cards)."""

    name: str
    title: str
    subdir: str
    env: str
    tree: str

    @property
    def card(self) -> str:
        return f"datasets/{self.name}.md"


LAYOUTS: dict[str, Layout] = {l.name: l for l in [
    Layout("imagenet_val", "ImageNet-1k val", "imagenet/val", "CBBENCH_IMAGENET_VAL",
           "<wnid>/<file>.JPEG (1000 wnid folders, 50 images each)"),
    Layout("imagenet_c", "ImageNet-C", "imagenet-c", "CBBENCH_IMAGENET_C",
           "<corruption>/<severity 1..5>/<wnid>/<file>.JPEG (19 corruptions x 5 severities x 50,000 images)"),
    Layout("imagenet_a", "ImageNet-A", "imagenet-a", "CBBENCH_IMAGENET_A",
           "<wnid>/<file>.jpg (200 wnid folders, 7,500 images)"),
    Layout("imagenet_r", "ImageNet-R", "imagenet-r", "CBBENCH_IMAGENET_R",
           "<wnid>/<file>.jpg (200 wnid folders, 30,000 images)"),
    Layout("imagenet_sketch", "ImageNet-Sketch", "imagenet-sketch", "CBBENCH_IMAGENET_SKETCH",
           "<wnid>/<file>.JPEG (1000 wnid folders, 50,889 images; the archive's sketch/ level may stay)"),
    Layout("imagenet_v2", "ImageNetV2 matched-frequency", "imagenetv2-matched-frequency-format-val",
           "CBBENCH_IMAGENET_V2", "<class index 0..999>/<file>.jpeg (1000 folders, 10 images each)"),
]}


def dataset_dir(name: str, data_root: Path | None) -> tuple[Path | None, str]:
    """(folder, where it came from) for dataset ``name``; the folder is None when nothing says where."""
    return layout_dir(LAYOUTS[name], data_root)


def layout_dir(layout: Layout, data_root: Path | None) -> tuple[Path | None, str]:
    """(folder, where it came from) of a layout: its environment variable, else its place under the data root."""
    value = os.environ.get(layout.env)
    if value:
        return Path(value).expanduser(), layout.env
    if data_root is not None:
        return Path(data_root) / layout.subdir, "data root"
    return None, ""


def _missing(name: str, data_root: Path | None, why: str) -> DatasetMissingError:
    layout = LAYOUTS[name]
    where = f"{Path(data_root) / layout.subdir}" if data_root is not None else f"<data root>/{layout.subdir}"
    return DatasetMissingError(
        f"{layout.title} ({name}) {why}. Expected {where}/{layout.tree}, or the folder named by "
        f"{layout.env}. How to get and prepare it: {layout.card}"
    )


def require_dir(name: str, data_root: Path | None) -> Path:
    """The dataset's folder, or DatasetMissingError naming the expected tree and the card."""
    path, source = dataset_dir(name, data_root)
    if path is None:
        raise _missing(name, data_root, f"not found: no data root (--data-root / CBBENCH_DATA) and "
                                        f"{LAYOUTS[name].env} is not set")
    if not path.is_dir():
        via = f" ({source}={path})" if source != "data root" else ""
        raise _missing(name, data_root, f"not found: {path} is not a folder{via}")
    return path


def _class_dataset(name: str, root: Path, label_of, num_classes: int, data_root: Path | None, *,
                   folder_sort_key=str, class_subset=None, description: str = "") -> ImageFolderDataset:
    folders, loose = list_class_folders(root)
    known = [f for f in folders if f in label_of]
    if not known:
        why = (f"is not in class folders: {root} holds {len(loose)} image files but no class folders "
               f"(reorganize it, see the card)" if loose else f"has no class folders in {root}")
        raise _missing(name, data_root, why)
    ds = scan_image_folders(root, label_of, name=name, num_classes=num_classes, folder_sort_key=folder_sort_key,
                            class_subset=class_subset, description=description)
    if len(ds) == 0:
        raise _missing(name, data_root, f"has class folders but no image files in {root}")
    return ds


def _subset_tensor(wnids) -> torch.Tensor:
    return torch.tensor(classes.subset_indices(wnids), dtype=torch.long)


def imagenet_val(data_root: Path | None) -> ImageFolderDataset:
    root = require_dir("imagenet_val", data_root)
    return _class_dataset("imagenet_val", root, classes.wnid_to_index(), 1000, data_root,
                          description="ImageNet-1k validation set (wnid folders -> class index)")


def imagenet_val_subset(val: ImageFolderDataset, which: str) -> ImageFolderDataset:
    """ImageNet val restricted to ImageNet-A's or -R's 200 classes ("a" / "r"), labels 0..199, same mask."""
    wnids = {"a": classes.imagenet_a_wnids, "r": classes.imagenet_r_wnids}[which]()
    label_map = {classes.wnid_to_index()[w]: pos for pos, w in enumerate(wnids)}
    return val.restrict(label_map, f"imagenet_val_{which}200", 200, class_subset=_subset_tensor(wnids),
                        description=f"ImageNet val restricted to ImageNet-{which.upper()}'s 200 classes")


def imagenet_val_robustbench(data_root: Path | None) -> ImageFolderDataset:
    """RobustBench's 5,000 fixed val images (``classes.robustbench_imagenet_5000()``), in that list's order.

    The list names files as ``<wnid>/ILSVRC2012_val_<n>.JPEG``, i.e. the standard
    val folder layout; every listed file must be there (a partial subset would not
    be RobustBench's), and extra val files are ignored.
    """
    root = require_dir("imagenet_val", data_root)
    listed = classes.robustbench_imagenet_5000()
    absent = [p for p in listed if not (root / p).is_file()]
    if absent:
        shown = ", ".join(absent[:3])
        raise _missing("imagenet_val", data_root,
                       f"lacks {len(absent)} of the 5,000 images of RobustBench's list (e.g. {shown}); the list "
                       f"needs the original ILSVRC2012_val_<n>.JPEG file names in wnid folders")
    index = classes.wnid_to_index()
    return ImageFolderDataset(
        name="imagenet_val_rb5000", root=root, paths=[str(root / p) for p in listed],
        labels=torch.tensor([index[p.split("/")[0]] for p in listed], dtype=torch.long), num_classes=1000,
        description="RobustBench's fixed 5,000 ImageNet val images, in its list order")


def _two_hundred(name: str, wnids, data_root: Path | None) -> ImageFolderDataset:
    root = require_dir(name, data_root)
    label_of = {w: pos for pos, w in enumerate(wnids)}
    return _class_dataset(name, root, label_of, 200, data_root, class_subset=_subset_tensor(wnids),
                          description=f"{LAYOUTS[name].title}: labels are positions in its sorted 200-wnid list")


def imagenet_a(data_root: Path | None) -> ImageFolderDataset:
    return _two_hundred("imagenet_a", classes.imagenet_a_wnids(), data_root)


def imagenet_r(data_root: Path | None) -> ImageFolderDataset:
    return _two_hundred("imagenet_r", classes.imagenet_r_wnids(), data_root)


def imagenet_sketch(data_root: Path | None) -> ImageFolderDataset:
    root = require_dir("imagenet_sketch", data_root)
    folders, _ = list_class_folders(root)
    if not any(f in classes.wnid_to_index() for f in folders) and (root / "sketch").is_dir():
        root = root / "sketch"  # the released archive unpacks to sketch/<wnid>/
    return _class_dataset("imagenet_sketch", root, classes.wnid_to_index(), 1000, data_root,
                          description="ImageNet-Sketch (wnid folders -> class index)")


V2_LABELS = {str(i): i for i in range(1000)}


def imagenet_v2(data_root: Path | None) -> ImageFolderDataset:
    root = require_dir("imagenet_v2", data_root)
    return _class_dataset("imagenet_v2", root, V2_LABELS, 1000, data_root, folder_sort_key=int,
                          description="ImageNetV2 matched-frequency (folders 0..999 are class indices, "
                                      "sorted numerically)")


@dataclass
class ImageNetC:
    """The precomputed ImageNet-C tree: one ImageFolderDataset per (corruption, severity) cell.

    Not a dataset itself (there is no single sample order across 95 cells): a
    task picks the cells it needs with ``cell(corruption, severity)``.
    """

    root: Path
    data_root: Path | None = None
    name: str = "imagenet_c"
    num_classes: int = 1000

    def has_cell(self, corruption: str, severity: int) -> bool:
        return (self.root / corruption / str(severity)).is_dir()

    def cells(self) -> list[tuple[str, int]]:
        """The (corruption, severity) folders present, known corruptions first in the usual order."""
        found = []
        for c in sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for s in sorted(p.name for p in (self.root / c).iterdir() if p.is_dir()):
                if s.isdigit():
                    found.append((c, int(s)))
        order = {c: i for i, c in enumerate(ALL_CORRUPTIONS)}
        return sorted(found, key=lambda cs: (order.get(cs[0], len(order)), cs[0], cs[1]))

    def cell(self, corruption: str, severity: int) -> ImageFolderDataset:
        folder = self.root / corruption / str(severity)
        if not folder.is_dir():
            raise _missing("imagenet_c", self.data_root, f"lacks the cell {corruption}/{severity} ({folder})")
        return _class_dataset("imagenet_c", folder, classes.wnid_to_index(), 1000, self.data_root,
                              description=f"ImageNet-C {corruption} severity {severity} (224x224, not resized)")

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        raise TypeError("imagenet_c is a tree of (corruption, severity) cells: use .cell(corruption, severity)")

    def batches(self, *args, **kwargs):
        raise TypeError("imagenet_c is a tree of (corruption, severity) cells: use .cell(corruption, severity)")


def imagenet_c(data_root: Path | None) -> ImageNetC:
    root = require_dir("imagenet_c", data_root)
    tree = ImageNetC(root, data_root)
    if not tree.cells():
        raise _missing("imagenet_c", data_root, f"has no <corruption>/<severity> folders in {root}")
    return tree


# name -> factory (registered by cbbench.data.registry)
FACTORIES = {"imagenet_val": imagenet_val, "imagenet_val_rb5000": imagenet_val_robustbench, "imagenet_c": imagenet_c,
             "imagenet_a": imagenet_a, "imagenet_r": imagenet_r, "imagenet_sketch": imagenet_sketch,
             "imagenet_v2": imagenet_v2}
