"""Plan and execute a suite: models x tasks, skipping cells the store already holds. No printing."""
from __future__ import annotations

import logging
import os
import platform
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from cbbench import distributed
from cbbench.data.registry import load_dataset
from cbbench.errors import CellNotApplicable, DatasetMissingError, StoreError
from cbbench.metrics import nonfinite_count
from cbbench.models.build import load_model
from cbbench.models.checkpoint import check_file
from cbbench.models.zoo import resolve
from cbbench.paths import checkpoint_dir
from cbbench.paths import data_root as resolve_data_root
from cbbench.paths import results_dir as resolve_results_dir
from cbbench.store import Store, cell_key
from cbbench.suites import SUITES
from cbbench.tasks import TaskContext
from cbbench.data.device_decode import decode_on_device
from cbbench.data.folders import reads_image_files
from cbbench.tasks.context import CellStore, Pipeline, RunSettings, pipeline_key
from cbbench.train import train_missing, trained_checkpoint

log = logging.getLogger(__name__)

# How often a running cell writes its finished batches to the store (tasks/stream.py): the most work a
# kill -9 can lose. A write costs milliseconds; set CBBENCH_STREAM_EVERY_S to change it.
def stream_every_s() -> float:
    text = os.environ.get("CBBENCH_STREAM_EVERY_S", "30")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise ValueError(f"CBBENCH_STREAM_EVERY_S={text!r}: expected seconds >= 0 (e.g. 30), or unset it")
    return value


@dataclass
class RunConfig:
    suite: str | None = None  # None: "robustness", or its data-backed counterpart when a data root is given
    models: list[str] | None = None
    tasks: list[str] | None = None
    data_root: str | None = None
    results: str | None = None
    checkpoints: str | None = None
    limit: int | None = None
    device: str = "auto"
    seed: int = 0
    batch_size: int = 128
    force: bool = False
    # The evaluation forward (tasks/context.py Pipeline): autocast dtype, NHWC, torch.compile. Off: plain fp32.
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    # Image decoding: cpu (PIL in DataLoader workers), gpu (torchvision on the CUDA device), auto (gpu on CUDA).
    decode: str = "auto"

    @property
    def pipeline(self) -> Pipeline:
        return Pipeline(amp=self.amp, channels_last=self.channels_last, compile=self.compile)


@dataclass
class CellOutcome:
    model: str
    task: str
    status: str  # ok | cached | skipped | failed
    reason: str | None = None  # one line; a failed cell's traceback is in the store (and logged under -v)
    traceback: str | None = None
    wall_s: float = 0.0
    nonfinite: int = 0  # images with NaN/inf logits: the cell's numbers are withheld from the report


@dataclass
class RunSummary:
    run_id: int
    results_dir: Path
    suite: str
    outcomes: list[CellOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def nonfinite(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.nonfinite]


class FollowerStore:
    """What a non-zero rank holds instead of the store: reads nothing, writes nothing."""

    def __init__(self, results_dir: Path):
        self.dir = results_dir

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but no CUDA GPU is visible; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def provenance(device: torch.device) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from cbbench.machine import cpu_model

    versions = {}
    for pkg in ("cbbench", "torch", "timm", "foolbox", "numpy", "imagecorruptions"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "versions": versions,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run(config: RunConfig, progress: Callable = None, on_event: Callable[[str], None] = None,
        prebuilt: dict | None = None) -> RunSummary:
    """Execute ``config``; every finished cell is committed at once, so an interrupted run resumes.

    ``prebuilt``: name -> a model built in Python (cbbench.api.prepare: ``spec`` and ``weights_digest`` set),
    used instead of loading the spec of that name."""
    from cbbench.suite_file import load_suite, task_from_entry

    say = on_event or (lambda msg: None)
    data_root = resolve_data_root(config.data_root)
    suite = load_suite(config.suite or "robustness")  # a name, a suite file (.yaml) or a Suite
    if data_root is not None and suite.with_data_root and config.suite is None:
        say(f"data root {data_root} given: running suite {suite.with_data_root} (the data-backed "
            f"counterpart of {suite.name})")
        suite = SUITES.get(suite.with_data_root)
    prebuilt = prebuilt or {}
    specs = [prebuilt[n].spec if isinstance(n, str) and n in prebuilt else resolve(n)
             for n in (config.models or suite.models)]
    for spec in specs:  # a checkpoint the user named must exist: bad input, before any work (zoo cache: files may not)
        if spec.weights == "file" and not spec.checkpoint.startswith("cache:"):
            if not Path(spec.checkpoint).expanduser().is_file():
                raise FileNotFoundError(f"model {spec.name}: checkpoint {spec.checkpoint} not found; pass an existing "
                                        "file (timm:ARCH[+cb]@/path/to/checkpoint.pth)")
            check_file(spec.checkpoint)
    tasks = [task_from_entry(t) for t in (config.tasks or suite.tasks)]  # "pgd" or {"pgd": {"eps": "2/255"}}
    _check_distinct(specs, tasks)
    every_s = stream_every_s()
    checkpoint_dir(config.checkpoints)  # a file in its place: bad input, before any work
    pipeline = config.pipeline  # validates --amp before any work
    device = distributed.local_device(pick_device(config.device))
    decode_gpu = decode_on_device(config.decode, device)  # validates --decode before any work
    with distributed.process_group(device.type):
        return _run_cells(config, suite, specs, tasks, every_s, pipeline, device, decode_gpu, data_root, say,
                          progress, prebuilt)


def _check_distinct(specs, tasks) -> None:
    """A model or task listed twice, or two names for one network with the same weights (they share every cell: a
    cell's key leaves the name out, so the report would show one of them): bad input, before any work. Modules
    from Python differ by their weights' digest, which cbbench.evaluate checks."""
    for what, names in (("models", [s.name for s in specs]), ("tasks", [t.name for t in tasks])):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{what}: {', '.join(twice)} listed twice; list each once")
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.weights == "memory":
            continue
        first = seen.setdefault(spec.identity(), spec.name)
        if first != spec.name:
            what = f"checkpoint {spec.checkpoint}" if spec.checkpoint else f"{spec.weights} weights, seed {spec.seed}"
            raise ValueError(f"models {first} and {spec.name} are the same network with the same weights ({what}); "
                             "a run compares different models: list one of them, or give the other its own weights")


def _run_cells(config, suite, specs, tasks, every_s, pipeline, device, decode_gpu, data_root, say, progress,
               prebuilt) -> RunSummary:
    results = resolve_results_dir(config.results)
    # Only rank 0 touches the store; the other ranks follow its decisions (distributed.from_main).
    store = Store(results) if distributed.is_main() else FollowerStore(results)
    summary = RunSummary(distributed.from_main(store.start_run(suite.name, asdict(config))), results, suite.name)
    try:
        try:
            dataset, missing = load_dataset(suite.dataset, data_root), None
        except DatasetMissingError as exc:
            dataset, missing = None, str(exc)
        models, unavailable = _load_models(specs, dataset, device, config, say, progress, prebuilt)
        partners = _partners(models)
        run_provenance = provenance(device)  # what every cell of this run shares
        settings = RunSettings(device=device, batch_size=config.batch_size, limit=config.limit, seed=config.seed,
                               data_root=data_root, pipeline=pipeline, decode_on_device=decode_gpu)
        position = 0
        for task in tasks:
            for spec in specs:
                model = models.get(spec.name)
                params = task.params()
                if task.seeded_per_batch:  # its random draws follow the batch boundaries
                    params["batch_size"] = config.batch_size
                if task.uses_partner:  # e.g. transfer attacks: the source is part of the cell
                    partner = partners.get(spec.name)
                    params["partner"] = f"{partner.spec.name}@{partner.weights_digest}" if partner else None
                digest = model.weights_digest if model is not None else "unavailable"
                key = cell_key(spec.identity(), digest, task.name, task.version, params,
                               suite.dataset, config.limit, config.seed,
                               pipeline=pipeline_key(pipeline, decode_gpu and reads_image_files(task, dataset)))
                ident = dict(key=key, model=spec.name, model_spec=spec.to_dict(), weights_digest=digest,
                             task=task.name, task_version=task.version, task_params=params,
                             dataset=suite.dataset, limit=config.limit, seed=config.seed)
                skip = unavailable.get(spec.name) or (missing if not task.own_dataset else None)
                if skip is not None:
                    store.put(**ident, status="skipped", reason=skip)
                    outcome = CellOutcome(spec.name, task.name, "skipped", skip)
                elif (stored := distributed.from_main(store.ok_metrics(key))) is not None and not config.force:
                    outcome = CellOutcome(spec.name, task.name, "cached", nonfinite=nonfinite_count(stored))
                else:
                    if config.force:
                        store.delete_parts(key)  # also what an interrupted attempt stored
                    outcome = _evaluate(store, ident, task, model, partners.get(spec.name), dataset, settings,
                                        run_provenance, progress, every_s)
                store.add_run_cell(summary.run_id, position, key, spec.name, task.name, outcome.status,
                                   outcome.reason, outcome.traceback)
                position += 1
                summary.outcomes.append(outcome)
                say(f"{task.name} / {spec.name}: {outcome.status}"
                    + (f" ({outcome.wall_s:.1f} s)" if outcome.status == "ok" else "")
                    + (f": {outcome.reason}" if outcome.reason else ""))
        store.finish_run(summary.run_id)
    finally:
        store.close()
    return summary


def _load_models(specs, dataset, device, config, say, progress=None, prebuilt=None) -> tuple[dict, dict[str, str]]:
    """Load every model once. Weights that are not on disk make that model's cells skipped (with the
    reason); a checkpoint that does not fit its model is an error, as is a class-count mismatch.
    Models trained by cbbench that are not cached yet are trained first, in parallel."""
    prebuilt = prebuilt or {}
    models, unavailable = {}, {}
    if not distributed.is_main():
        distributed.barrier()  # rank 0 loads first: it trains demo models once, the others reuse them
    else:
        train_missing(specs, config.checkpoints, device, config.data_root, say, progress)
    for spec in specs:
        say(f"loading model {spec.name}")
        try:
            if spec.name in prebuilt:
                models[spec.name] = prebuilt[spec.name].to(device)
            else:  # a model train_missing left untrained (its data is missing) raises that reason here
                trained = (trained_checkpoint(spec, config.checkpoints, device=device, data_root=config.data_root)
                           if spec.weights == "train" else None)
                models[spec.name] = load_model(spec, device=device, checkpoint_dir=config.checkpoints,
                                               trained=trained)
        except FileNotFoundError as exc:
            unavailable[spec.name] = f"weights unavailable: {exc}"
            say(f"  skipping {spec.name}: {exc}")
            continue
        if config.channels_last:  # NHWC weights to match NHWC inputs (run_batches converts those)
            models[spec.name].to(memory_format=torch.channels_last)
        if dataset is not None:
            _check_classes(models[spec.name], dataset)
    if distributed.is_main():
        distributed.barrier()
    return models, unavailable


def _check_classes(model, dataset) -> None:
    num_classes = getattr(model.net, "num_classes", None)
    if num_classes is not None and num_classes != dataset.num_classes:
        raise ValueError(
            f"model {model.spec.name} predicts {num_classes} classes but dataset {dataset.name} has "
            f"{dataset.num_classes}; pick models trained for {dataset.name} (cbbench ls models)"
        )


def _partners(models: dict) -> dict:
    """name -> the model it is compared with: a CB model's baseline, a baseline's (only) CB twin."""
    from cbbench.report.pairing import pair_of

    specs = {name: m.spec.to_dict() for name, m in models.items()}
    partners = {}
    for name, spec in specs.items():
        baseline = pair_of(spec, specs)
        if baseline is not None:
            partners[name] = models[baseline]
            twins = [n for n, s in specs.items() if pair_of(s, specs) == baseline]
            if len(twins) == 1:
                partners[baseline] = models[name]
    return partners


def _evaluate(store, ident, task, model, partner, dataset, settings: RunSettings, run_provenance, progress,
              every_s: float | None = None) -> CellOutcome:
    key = ident["key"]
    ctx = TaskContext(dataset, settings, CellStore(store, key, stream_every_s() if every_s is None else every_s),
                      transform=getattr(model, "eval_transform", None), partner=partner)
    if progress is not None:
        ctx.progress = progress
    t0 = time.perf_counter()
    try:
        result = task.evaluate(model, ctx)
    except (DatasetMissingError, CellNotApplicable) as exc:
        store.put(**ident, status="skipped", reason=str(exc))
        return CellOutcome(ident["model"], task.name, "skipped", str(exc))
    except StoreError:
        raise  # the store itself (full disk, damage): every later cell would fail the same way
    except Exception as exc:  # one failing cell must not lose the others; it is recorded and reported
        reason = one_line(exc)
        trace = traceback.format_exc()
        log.info("task %s failed on %s:\n%s", task.name, ident["model"], trace)  # shown with -v
        store.put(**ident, status="failed", reason=reason, provenance=dict(run_provenance, traceback=trace))
        return CellOutcome(ident["model"], task.name, "failed", reason, traceback=trace)
    wall = time.perf_counter() - t0
    prov = dict(run_provenance, wall_s=wall, batch_size=settings.batch_size, protocol=task.protocol, notes=result.notes,
                num_params=sum(p.numel() for p in model.parameters()), weights_digest=model.weights_digest,
                trained_on=getattr(model, "trained_on", None),
                pipeline=dict(ctx.run.pipeline.describe(), decode="gpu" if ctx.run.decode_on_device else "cpu",
                              notes=list(ctx.pipeline_notes)))
    store.put(**ident, status="ok", metrics=result.metrics, samples=result.samples, provenance=prov, wall_s=wall)
    return CellOutcome(ident["model"], task.name, "ok", wall_s=wall, nonfinite=nonfinite_count(result.metrics))


def one_line(exc: BaseException, width: int = 300) -> str:
    """A failure as one line: its type and the first line of its message, shortened."""
    text = f"{exc.__class__.__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    return text if len(text) <= width else text[: width - 1] + "…"
