"""Make robustbench 1.1.1 usable offline; see docs/robustbench.md.

cbbench uses only robustbench's model zoo (loaded from local checkpoints) and its
fixed 5,000-image ImageNet evaluation list, never its eval/benchmark functions
nor its downloads.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

from torch import nn

INSTALL_HINT = (
    "install it with: pip install -e '.[robustbench]' && "
    "pip install --no-deps robustbench==1.1.1"
)


def installed_version() -> str | None:
    """The installed robustbench distribution's version (None if absent), read from its metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("robustbench")
    except PackageNotFoundError:
        return None


def import_robustbench() -> ModuleType:
    """Import and return ``robustbench``, or raise one ImportError that says how to install it.

    robustbench 1.1.1 imports ``autoattack`` / ``autoattack.state``, but its PyPI
    dependency ``pyautoattack`` ships the same code as module ``pyautoattack``.
    We alias the two only when no real ``autoattack`` is importable, so a
    git-installed AutoAttack is never shadowed.
    """
    try:
        installed = installed_version()
        if installed is None:
            # torchattacks ships a 'robustbench' folder of its own: importable, but not robustbench.
            raise ImportError("robustbench is not installed (no robustbench distribution; an importable "
                              "'robustbench' folder shipped by another package, such as torchattacks, is not it)")
        if importlib.util.find_spec("autoattack") is None:
            import pyautoattack
            import pyautoattack.state

            sys.modules["autoattack"] = pyautoattack
            sys.modules["autoattack.state"] = pyautoattack.state
        with warnings.catch_warnings():
            # Noise from robustbench's own imports (deprecated timm paths, pkg_resources).
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\.")
            warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated")
            return importlib.import_module("robustbench")
    except ImportError as exc:
        msg = f"robustbench is not usable ({exc}); {INSTALL_HINT}"
        if getattr(exc, "name", None) == "pkg_resources":
            msg += ". robustbench imports pkg_resources, which needs setuptools<81: pip install 'setuptools<81'"
        raise ImportError(msg) from exc


def imagenet_eval_subset() -> list[str]:
    """RobustBench's fixed ImageNet evaluation list, 5,000 ``<wnid>/<file>.JPEG`` paths.

    Read from the installed package's helper file (not hard-coded, so it follows
    the installed robustbench), without importing robustbench itself.
    """
    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"robustbench is not installed; {INSTALL_HINT}")
    path = Path(spec.submodule_search_locations[0]) / "helper_files" / "imagenet_test_image_ids.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _enum_value(enum_cls, value, what: str):
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum_cls)
        raise ValueError(f"unknown robustbench {what} {value!r}; expected one of {choices}") from None


def expected_checkpoint_paths(name: str, *, dataset, threat_model, model_dir) -> list[Path]:
    """The exact file(s) robustbench.utils.load_model reads (or else downloads) for ``name``.

    Mirrors load_model: ``<model_dir>/<dataset>/<threat>/<name>.pt``, with
    corruptions_3d stored under corruptions, and ``<name>.pt_m<i>.pt`` per member
    of an ensemble. Also validates the names, with clear errors.
    """
    import_robustbench()
    import timm
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    ds = _enum_value(BenchmarkDataset, dataset, "dataset")
    tm = _enum_value(ThreatModel, threat_model, "threat_model")
    tm = ThreatModel(tm.value.replace("_3d", ""))
    zoo = model_dicts[ds].get(tm)
    if zoo is None:
        raise ValueError(f"robustbench has no {ds.value} models for threat_model {tm.value!r}")
    if name not in zoo:
        near = difflib.get_close_matches(name, list(zoo), n=3)
        raise ValueError(
            f"{name!r} is not in robustbench's {ds.value}/{tm.value} model zoo"
            + (f"; did you mean {near}?" if near else "")
        )
    timm_name = f"{name.lower().replace('-', '_')}_{ds.value.lower()}_{tm.value.lower()}"
    gdrive = zoo[name]["gdrive_id"]
    if gdrive is None or timm.is_model(timm_name) or (ds == BenchmarkDataset.imagenet and "Standard" in name):
        # robustbench builds these with pretrained=True (timm/torchvision hub): no local path.
        raise ValueError(
            f"robustbench loads {name!r} ({ds.value}/{tm.value}) from a model hub, "
            "not from a local checkpoint; cbbench never downloads, so it cannot load it"
        )
    base = Path(model_dir) / ds.value / tm.value / f"{name}.pt"
    if isinstance(gdrive, list):
        return [Path(f"{base}_m{i}.pt") for i in range(len(gdrive))]
    return [base]


def load_local_model(name: str, *, dataset, threat_model, model_dir) -> nn.Module:
    """Load a robustbench zoo model from a local checkpoint, in eval mode; never download.

    robustbench.utils.load_model silently downloads from Google Drive when the
    checkpoint file is missing, so we check the exact path first and fail instead.
    """
    paths = expected_checkpoint_paths(name, dataset=dataset, threat_model=threat_model, model_dir=model_dir)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"robustbench checkpoint for {name!r} not found at {', '.join(missing)}; "
            "place it there yourself (cbbench never downloads checkpoints)"
        )
    rb = import_robustbench()
    model = rb.utils.load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    return model.eval()
