"""`cbbench datasets check`: which ImageNet-scale datasets are on disk, and are they complete?

Counts files (image extensions, see cbbench.data.folders.IMG_EXTENSIONS) per class
folder against the published totals; decodes nothing and runs no model. One row
per dataset, each a dict with the keys of ``COLUMNS``:

    status   present     every expected class folder, exactly the expected image counts
             missing     no folder (nothing configured, or the folder does not exist)
             incomplete  folder there, but classes or images are missing
             unexpected  nothing missing, but more images than expected or folders that are
                         not classes of the dataset (a wrong folder, a mixed-up extraction)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cbbench.corruptions.catalog import ALL_CORRUPTIONS, HELDOUT_CORRUPTIONS, SEVERITIES
from cbbench.data import classes
from cbbench.data.folders import list_class_folders
from cbbench.data.imagenet import LAYOUTS, V2_LABELS, dataset_dir

COLUMNS = ("dataset", "status", "images", "expected", "classes", "path", "detail")


@dataclass(frozen=True)
class Expected:
    classes: tuple[str, ...]  # folder names
    total: int
    per_class: int | None = None  # exact count per class folder, when the dataset has one


def expected_counts() -> dict[str, Expected]:
    wnids = classes.imagenet_wnids()
    return {
        "imagenet_val": Expected(wnids, 50_000, 50),
        "imagenet_a": Expected(classes.imagenet_a_wnids(), 7_500),
        "imagenet_r": Expected(classes.imagenet_r_wnids(), 30_000),
        "imagenet_sketch": Expected(wnids, 50_889),
        "imagenet_v2": Expected(tuple(V2_LABELS), 10_000, 10),
        # per (corruption, severity) cell
        "imagenet_c": Expected(wnids, 50_000, 50),
    }


def expected_train() -> Expected:
    """ImageNet train (read by ``cbbench train --recipe``): 732 to 1,300 images per class, so no per-class count."""
    return Expected(classes.imagenet_wnids(), 1_281_167)


def _natural(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)  # V2's "2" before "10"


def _fmt_list(items: list[str], n: int = 4) -> str:
    items = sorted(items, key=lambda s: _natural(s.split(":")[0]))
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _count_tree(root: Path, exp: Expected) -> tuple[str, int, int, list[str]]:
    """(status, images counted in expected classes, expected classes found, problems) for one class tree."""
    folders, loose = list_class_folders(root)
    expected = set(exp.classes)
    counts = {f: len(names) for f, names in folders.items() if f in expected}
    unknown = sorted(set(folders) - expected)
    absent = sorted(expected - set(folders))
    total = sum(counts.values())
    problems: list[str] = []
    short, over = [], []
    if exp.per_class is not None:
        short = sorted(f"{f}: {n}/{exp.per_class}" for f, n in counts.items() if n < exp.per_class)
        over = sorted(f"{f}: {n}/{exp.per_class}" for f, n in counts.items() if n > exp.per_class)
    if absent:
        problems.append(f"{len(absent)} class folder(s) missing ({_fmt_list(absent)})")
    if short:
        problems.append(f"{len(short)} class(es) short of images ({_fmt_list(short)})")
    empty = sorted(f for f, n in counts.items() if n == 0)
    if empty and exp.per_class is None:
        problems.append(f"{len(empty)} empty class folder(s) ({_fmt_list(empty)})")
    if loose:
        problems.append(f"{len(loose)} image file(s) outside class folders (a flat, unsorted tree?)")
    surplus = []
    if over:
        surplus.append(f"{len(over)} class(es) with more images than expected ({_fmt_list(over)})")
    if unknown:
        surplus.append(f"{len(unknown)} folder(s) that are not classes of this dataset ({_fmt_list(unknown)})")
    if absent or short or (empty and exp.per_class is None) or loose or total < exp.total:
        status = "incomplete"
    elif surplus or total > exp.total:
        status = "unexpected"
    else:
        status = "present"
    if total != exp.total and not (short or over):
        (problems if total < exp.total else surplus).append(f"{total:,} images, expected {exp.total:,}")
    return status, total, len(counts), problems + surplus


def _row(name: str, status: str, images: int | None, expected: int, classes_col: str, path: str,
         detail: str) -> dict:
    return dict(zip(COLUMNS, (name, status, images, expected, classes_col, path, detail)))


def _check_imagenet_c(root: Path, exp: Expected, path_col: str) -> dict:
    total_expected = exp.total * len(ALL_CORRUPTIONS) * len(SEVERITIES)
    complete, images, problems, absent_cells = 0, 0, [], []
    statuses = []
    for c in ALL_CORRUPTIONS:
        for s in SEVERITIES:
            cell = root / c / str(s)
            if not cell.is_dir():
                absent_cells.append(f"{c}/{s}")
                continue
            status, n, n_classes, _ = _count_tree(cell, exp)
            images += n
            statuses.append(status)
            if status == "present":
                complete += 1
            else:
                problems.append(f"{c}/{s} {status}: {n:,}/{exp.total:,} images, {n_classes}/{len(exp.classes)} classes")
    extra = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and p.name not in ALL_CORRUPTIONS)
    n_cells = len(ALL_CORRUPTIONS) * len(SEVERITIES)
    detail = []
    if absent_cells:
        absent_corr = [c for c in ALL_CORRUPTIONS if all(f"{c}/{s}" in absent_cells for s in SEVERITIES)]
        if absent_corr and set(absent_corr) <= set(HELDOUT_CORRUPTIONS) and len(absent_cells) == 5 * len(absent_corr):
            detail.append(f"held-out corruption(s) missing ({', '.join(absent_corr)}; not needed for the mCE)")
        else:
            detail.append(f"{len(absent_cells)} cell(s) missing ({_fmt_list(absent_cells)})")
    detail += problems[:3] + ([f"... {len(problems) - 3} more cells with problems"] if len(problems) > 3 else [])
    if extra:
        detail.append(f"folder(s) that are not corruptions: {_fmt_list(extra)}")
    if absent_cells or "incomplete" in statuses:
        status = "incomplete"
    elif extra or "unexpected" in statuses:
        status = "unexpected"
    else:
        status = "present"
    return _row("imagenet_c", status, images, total_expected, f"{complete}/{n_cells} cells complete", path_col,
                "; ".join(detail) or f"{exp.total:,} images per (corruption, severity)")


def check_datasets(data_root: Path | None) -> list[dict]:
    """One row per ImageNet-scale dataset: dataset, status, images, expected, classes, path, detail."""
    from cbbench.training.data import TRAIN, train_dir  # the train layout lives with its only reader

    rows = []
    for name, exp in {**expected_counts(), TRAIN.name: expected_train()}.items():
        layout = TRAIN if name == TRAIN.name else LAYOUTS[name]
        path, source = train_dir(data_root) if name == TRAIN.name else dataset_dir(name, data_root)
        total = exp.total * (len(ALL_CORRUPTIONS) * len(SEVERITIES) if name == "imagenet_c" else 1)
        if path is None:
            rows.append(_row(name, "missing", None, total, "", f"<data root>/{layout.subdir}",
                             f"no data root and {layout.env} not set; see {layout.card}"))
            continue
        path_col = f"{path}" + (f" ({source})" if source != "data root" else "")
        if not path.is_dir():
            rows.append(_row(name, "missing", None, total, "", path_col,
                             f"not a folder; expected {layout.tree}; see {layout.card}"))
            continue
        if name == "imagenet_c":
            rows.append(_check_imagenet_c(path, exp, path_col))
            continue
        root = path
        if name == "imagenet_sketch":
            folders, _ = list_class_folders(path)
            if not any(f in set(exp.classes) for f in folders) and (path / "sketch").is_dir():
                root = path / "sketch"
        status, total, n_classes, problems = _count_tree(root, exp)
        rows.append(_row(name, status, total, exp.total, f"{n_classes}/{len(exp.classes)}", path_col,
                         "; ".join(problems)))
    return rows
