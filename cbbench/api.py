"""``cbbench.evaluate(model)``: evaluate a model built in Python, through the CLI's runner, store, cache and report.

A researcher's model lives in a notebook, not in the zoo. It enters the runner as a
"prebuilt" model: wrapped to take [0,1] images (normalization, and resizing when
its input size differs from the dataset's, happen inside, as for zoo models, so
attack epsilons stay in pixels), and identified in the cell key by its class, whether
it has CB (whose layers have no weights), its preprocessing and a digest of its state_dict,
so a cached cell is reused only for the same weights and a changed weight gives new cells.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cbbench.models.build import Normalized

# The normalization a model trained on the dataset usually expects (what cbbench's own models use there).
DATASET_STATS = {"digits": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                 "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                 "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PREPROCESSING_KEYS = ("mean", "std", "input_size")


class InMemoryModel(Normalized):
    """The user's module behind cbbench's interface: [0,1] RGB in, resized to ``input_size`` if given, then
    normalized. Carries what the runner reads from a loaded model (spec, weights_digest, eval_transform)."""

    def __init__(self, net: nn.Module, mean, std, input_size: int | None = None):
        super().__init__(net, mean, std)
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return super().forward(x)


def _preprocessing(preprocessing: dict | None, dataset: str) -> tuple[tuple, tuple, int | None]:
    """(mean, std, input size) from the user's spec; missing entries: the dataset's (no resize)."""
    spec = dict(preprocessing or {})
    unknown = sorted(set(spec) - set(PREPROCESSING_KEYS))
    if unknown:
        raise ValueError(f"preprocessing: unknown key(s) {unknown}; allowed: {', '.join(PREPROCESSING_KEYS)} "
                         "(e.g. {'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'input_size': 224})")
    mean, std = DATASET_STATS.get(dataset, IMAGENET_STATS)
    mean, std = tuple(float(v) for v in spec.get("mean", mean)), tuple(float(v) for v in spec.get("std", std))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"preprocessing: mean and std need 3 values each (RGB), std > 0; got {mean}, {std}")
    size = spec.get("input_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"preprocessing: input_size must be a whole number of pixels >= 1, not {size!r}")
    return mean, std, size


def _file_transform(net: nn.Module, size: int | None):
    """PIL -> [0,1] tensor for datasets read from files: timm's eval transform for a timm model of its own
    size, else resize to size/0.875 and center-crop (ImageNet's usual protocol)."""
    from torchvision import transforms

    if size is None and hasattr(net, "pretrained_cfg"):
        from cbbench.data.transforms import eval_transform_for

        return eval_transform_for(net)
    size = size or 224
    return transforms.Compose([transforms.Resize(int(size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(size), transforms.ToTensor()])


def prepare(module: nn.Module, name: str, dataset: str, preprocessing: dict | None = None, cb: bool = False,
            baseline: str | None = None, device: torch.device | str = "cpu", seed: int = 0) -> InMemoryModel:
    """``module`` (eval mode, moved to ``device``) wrapped for the runner, with a spec naming its class and
    preprocessing and a digest of its weights: the two things a cached cell must match."""
    from cbbench.cb import has_context_broadcasting
    from cbbench.models.checkpoint import weights_digest
    from cbbench.models.spec import ModelSpec

    if not isinstance(module, nn.Module):
        raise TypeError(f"model {name}: expected a torch.nn.Module, not {type(module).__name__}")
    if isinstance(module, Normalized):  # cbbench.load_model's models normalize inside: not a second time
        given = sorted({"mean", "std"} & set(preprocessing or {}))
        if given:
            raise ValueError(f"model {name} is a cbbench model that normalizes inside (cbbench.load_model); "
                             f"preprocessing {given} would normalize it twice: leave them out, or pass its .net")
        inside = {"mean": module.mean.flatten().tolist(), "std": module.std.flatten().tolist()}
        preprocessing, module = {**(preprocessing or {}), **inside}, module.net
    if has_context_broadcasting(module) and not cb:  # CB layers have no weights: the spec's cb tells the twins apart
        raise ValueError(f"model {name} has cbbench's CB layers; it is the CB side of its pair (leave cb out, or "
                         "pass the network without them)")
    mean, std, size = _preprocessing(preprocessing, dataset)
    cls = type(module)
    model = InMemoryModel(module, mean, std, size).eval().to(device)
    model.spec = ModelSpec(name=name, arch=f"python:{cls.__module__}.{cls.__qualname__}",
                           arch_kwargs=(("input_size", size),) if size else (), cb=cb, baseline=baseline,
                           weights="memory", dataset=dataset, mean=mean, std=std, seed=seed,
                           description="a module passed to cbbench.evaluate")
    model.weights_digest = weights_digest(module)
    model.eval_transform = _file_transform(module, size)
    model.trained_on = None
    return model


def load_model(name_or_spec, device: str | torch.device = "cpu", checkpoint_dir: str | Path | None = None,
               data_root: str | Path | None = None) -> Normalized:
    """``cbbench.load_model``: cbbench.models.build.load_model, training cbbench's own models (weights="train":
    demo and CIFAR ones) on first use into ``checkpoint_dir`` (default: the user cache dir, or CBBENCH_CKPT);
    CIFAR ones read their training data from ``data_root`` (default: CBBENCH_DATA)."""
    from cbbench.models import build
    from cbbench.models.zoo import resolve

    spec = resolve(name_or_spec)
    trained = None
    if spec.weights == "train":
        from cbbench.train import trained_checkpoint

        trained = trained_checkpoint(spec, checkpoint_dir, device=device, data_root=data_root)
    return build.load_model(spec, device=device, checkpoint_dir=checkpoint_dir, trained=trained)


def check_classes(model: InMemoryModel, dataset, device) -> None:
    """One forward on two images: a head that does not fit the dataset fails here, with the fix, not in a cell.
    The dataset's first two (decoded with the model's transform); random ones for a tree of datasets (ImageNet-C)."""
    from cbbench.data.base import EvalDataset

    x = torch.rand(2, 3, model.input_size or 224, model.input_size or 224)
    if isinstance(dataset, EvalDataset):
        x = next(iter(dataset.batches(2, 2, transform=model.eval_transform)), (x,))[0]
    with torch.no_grad():
        out = model(x.to(device))
    if out.ndim != 2 or out.shape[1] != dataset.num_classes:
        got = f"{out.shape[1]} classes" if out.ndim == 2 else f"output of shape {tuple(out.shape)}"
        raise ValueError(
            f"model {model.spec.name} predicts {got} but dataset {dataset.name} has {dataset.num_classes}; give it "
            f"a {dataset.num_classes}-class head trained on {dataset.name} (timm: "
            f"timm.create_model(arch, num_classes={dataset.num_classes}) or model.reset_classifier("
            f"{dataset.num_classes}), then fine-tune), or pass dataset= one with {out.shape[-1]} classes "
            "(cbbench ls datasets)")


@dataclass
class EvalResult:
    """What ``evaluate`` returns. ``table``: headline metric per task (fractions, not %), one row per model and
    a "Δ MODEL − BASELINE" row (paired, same images); ``paired``: those differences with 95% bootstrap
    intervals and McNemar p; ``cells``: the stored cells by (model, task); ``report_path``: the markdown report."""

    table: pd.DataFrame
    paired: pd.DataFrame
    cells: dict[tuple[str, str], Any]
    report_path: Path
    files: list[Path] = field(default_factory=list)
    outcomes: list = field(default_factory=list)  # runner.CellOutcome per cell: ok / cached / skipped / failed

    @property
    def failed(self) -> list:
        return [o for o in self.outcomes if o.status == "failed"]

    def __repr__(self) -> str:
        return f"EvalResult(report_path={str(self.report_path)!r})\n{self.table.to_string()}"


def evaluate(model: nn.Module | Sequence[nn.Module], baseline: nn.Module | Sequence[nn.Module] | None = None, *,
             suite: str | None = None, tasks: list | None = None, dataset: str | None = None,
             results: str | Path | None = None, limit: int | None = None, device: str = "auto", seed: int = 0,
             batch_size: int = 128, preprocessing: dict | None = None, name: str = "model",
             baseline_name: str = "baseline", report_name: str | None = None, data_root: str | Path | None = None,
             force: bool = False, log_samples: bool = False, verbose: bool = False,
             cb: bool | None = None) -> EvalResult:
    """Evaluate ``model`` (any torch module taking normalized images; cbbench feeds it [0,1] RGB through
    ``preprocessing``; a ``cbbench.load_model`` model as it is) on a suite's tasks, and ``baseline`` beside
    it with paired differences. cb: whether ``model`` is the CB side of the pair, whose claims the report
    judges (default: whether it has cbbench's CB layers); any other change is compared, not judged as CB.
    Lists of modules (one per training seed, ``model[k]`` paired with ``baseline[k]``, named NAME_sK) give the
    report's table across training seeds and its verdicts, which one pair cannot.

    suite: a suite name or a suite file (its dataset and tasks; default "robustness"). tasks: override them,
    as names or {"pgd": {"eps": "2/255"}}. dataset: override the suite's. preprocessing: {"mean", "std",
    "input_size"}; defaults: the dataset's usual mean/std, no resize. The run is stored under the suite
    name ``report_name`` (default "<suite>_<name>") in ``results`` (default ./results or CBBENCH_RESULTS),
    next to CLI runs; ``cbbench report`` re-renders it. The modules are put in eval mode on ``device``.
    """
    from cbbench.data.registry import load_dataset
    from cbbench.errors import DatasetMissingError
    from cbbench.paths import data_root as resolve_data_root
    from cbbench.runner import RunConfig, pick_device, run
    from cbbench.suite_file import load_suite, task_from_entry
    from cbbench.suites import Suite

    base = load_suite(suite or "robustness")
    dataset = dataset or base.dataset
    tasks = tuple(tasks or base.tasks)
    for i, entry in enumerate(tasks):  # bad task names or parameters: one clear error before any work
        task_from_entry(entry, f"tasks[{i}]")
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    baselines = [] if baseline is None else list(baseline) if isinstance(baseline, (list, tuple)) else [baseline]
    for what, given in (("model", models), ("baseline", baselines)):
        for k, m in enumerate(given):
            if not isinstance(m, nn.Module):
                at = f"{what}[{k}]" if len(given) > 1 else what
                raise TypeError(f"{at} must be a torch.nn.Module, not {type(m).__name__} (a zoo name: "
                                "cbbench.load_model(name))")
    if not models or (baselines and len(baselines) != len(models)):
        raise ValueError(f"{len(models)} model(s) and {len(baselines)} baseline(s): give one baseline per model "
                         "(model[k] is paired with baseline[k], one pair per training seed)")
    if baselines and name == baseline_name:
        raise ValueError(f"name and baseline_name are both {name!r}; give them different names")
    seeds = range(len(models))
    names = [f"{name}_s{k}" for k in seeds] if len(models) > 1 else [name]
    base_names = [f"{baseline_name}_s{k}" for k in seeds] if len(models) > 1 else [baseline_name]
    torch_device = pick_device(device)
    if cb is None:
        from cbbench.cb import has_context_broadcasting

        found = {has_context_broadcasting(m) for m in models}
        if len(found) > 1:  # the seeds of one arm are one change
            raise ValueError("some of the models have cbbench's CB layers and some do not: the modules of one arm "
                             "are the same change, one per training seed")
        cb = found.pop()
    prebuilt = {}
    for k, (module, own) in enumerate(zip(models, names)):
        prebuilt[own] = prepare(module, own, dataset, preprocessing, cb=bool(cb),
                                baseline=base_names[k] if baselines else None, device=torch_device, seed=k)
    for k, (module, own) in enumerate(zip(baselines, base_names)):
        prebuilt[own] = prepare(module, own, dataset, preprocessing, device=torch_device, seed=k)
    seen: dict[tuple, str] = {}
    for own, m in prebuilt.items():  # one module twice would share every cell with itself
        first = seen.setdefault((m.weights_digest, m.spec.cb, m.spec.arch), own)
        if first != own:
            raise ValueError(f"{first} and {own} are the same network with the same weights: they would share every "
                             "cell; give each its own weights")
    try:
        data = load_dataset(dataset, resolve_data_root(data_root))
    except DatasetMissingError:
        data = None  # the runner records skipped cells with the reason
    if data is not None:
        for m in prebuilt.values():
            check_classes(m, data, torch_device)
    order = [x for k in seeds for x in ([base_names[k]] if baselines else []) + [names[k]]]
    run_suite = Suite(report_name or f"{base.name}_{name}", f"cbbench.evaluate of {name}", dataset, tuple(order),
                      tasks)
    config = RunConfig(suite=run_suite, data_root=str(data_root) if data_root else None,
                       results=str(results) if results else None, limit=limit, device=device, seed=seed,
                       batch_size=batch_size, force=force)
    say = (lambda msg: print(msg, file=sys.stderr)) if verbose else None
    summary = run(config, on_event=say, prebuilt=prebuilt)
    return _result(summary, log_samples)


def _result(summary, log_samples: bool) -> EvalResult:
    from cbbench.report import write_reports
    from cbbench.report.leaderboard import render_suite
    from cbbench.store import Store

    files = write_reports(summary.results_dir, [summary.suite])
    if log_samples:
        from cbbench.samples import export_samples

        files += export_samples(summary.results_dir, summary.suite)
    with Store(summary.results_dir) as store:
        cells = {(c.model, c.task): c for c in store.run_cells(summary.run_id)}
        rendered = render_suite(store, summary.suite, None)
    _, summary_frame, paired, *_ = rendered
    table, paired = _tables(summary_frame, paired, cells)
    return EvalResult(table, paired, cells, summary.results_dir / f"{summary.suite}.md", files, summary.outcomes)


def _tables(summary: pd.DataFrame, paired: list[dict], cells: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Headline per task (rows: models, then Δ rows) and the paired comparisons, from the report's own data."""
    from cbbench.report.leaderboard import _column

    tasks = list(dict.fromkeys(t for _, t in cells))
    rows = []
    for record in summary.to_dict(orient="records"):
        rows.append({"model": record["model"], **{t: record.get(f"{t}.{_column(t).key}") for t in tasks}})
        comparisons = {p["comparison"] for p in paired if p["comparison"].startswith(f"{record['model']} − ")}
        for comparison in sorted(comparisons):
            rows.append({"model": f"Δ {comparison}",
                         **{p["task"]: p["_delta"] for p in paired if p["comparison"] == comparison}})
    pairs = pd.DataFrame([{"comparison": p["comparison"], "task": p["task"], "n": p["n"], "delta": p["_delta"],
                           "ci_low": p["_low"], "ci_high": p["_high"],
                           "mcnemar_p": float(p["McNemar p"]) if p.get("McNemar p", "n/a") != "n/a" else float("nan")}
                          for p in paired])
    return pd.DataFrame(rows).set_index("model"), pairs
