"""Suites from the user's own YAML files, and tasks with overridden parameters.

``cbbench run --suite my_suite.yaml`` reads a file in the format of the built-in
suites (docs/suite_files.md), where a task may carry parameters:
``{pgd: {eps: 2/255, steps: 20}}``. Everything is checked here, before any model
is loaded, so a typo costs one line of error instead of a half-finished run.
An overridden task is the registered task with ``dataclasses.replace`` applied:
same name, version and code, other parameters; its parameters enter the cell key
through ``Task.params()``, so cached cells of the defaults are never reused for it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

from cbbench.suites import SUITES, Suite

SUITE_KEYS = ("name", "description", "dataset", "models", "tasks")
# Fields that pick what a task is (its name, attack, corruption engine), not how it is run: fixed per task.
FIXED_FIELDS = {"task_name", "attack", "engine", "source"}
# Fields FGSM ignores (one step of size eps): overriding them would change the cell key, not the numbers.
FGSM_IGNORES = {"steps", "step_size", "random_start", "rel_step"}
AT_LEAST_ONE = {"steps", "repeats", "n", "epochs", "batch_size", "max_iter", "train_per_class"}
PIXEL_FIELDS = {"eps", "step_size", "headline_eps", "epsilons"}
ALIASES = {"names": "corruptions"}  # {corruptions_torch: {names: [fog]}} reads naturally
MODEL_KEYS = ("name", "like", "checkpoint", "cb", "baseline", "seed", "weights", "arch", "arch_kwargs")


class SuiteFileError(ValueError):
    """A suite file or task entry that cannot be used; the message names the file, the key and the fix."""


def is_suite_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or Path(name).expanduser().is_file()


def load_suite(suite: str | Suite) -> Suite:
    """A registered suite name, a suite file, or a Suite (the Python API builds its own)."""
    if isinstance(suite, Suite):
        for i, entry in enumerate(suite.tasks):
            task_from_entry(entry, f"suite {suite.name}: tasks[{i}]")
        return suite
    if suite not in SUITES and is_suite_file(suite):
        return read_suite_file(suite)
    return SUITES.get(suite)


# ----------------------------------------------------------------------------------------------- tasks

def overridable(task) -> dict[str, Any]:
    """name -> default of the parameters a suite file may set for ``task`` (its dataclass fields)."""
    if not dataclasses.is_dataclass(task):
        return {}
    fixed = FIXED_FIELDS | (FGSM_IGNORES if getattr(task, "attack", None) == "fgsm" else set())
    return {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.init and f.name not in fixed}


def task_from_entry(entry, where: str | None = None):
    """A task from ``"pgd"`` or ``{"pgd": {"eps": "2/255"}}`` (or a Task itself); SuiteFileError if unusable."""
    from cbbench.registry import UnknownNameError
    from cbbench.tasks import TASKS, Task

    if isinstance(entry, Task):
        return entry
    at = f"{where}: " if where else ""  # where in a file the entry is; nothing for --tasks NAME
    if isinstance(entry, dict) and len(entry) == 1:
        (name, params), = entry.items()
        if params is None:
            params = {}
    elif isinstance(entry, str):
        name, params = entry, {}
    else:
        raise SuiteFileError(f"{at}expected a task name or {{NAME: {{PARAM: VALUE}}}}, e.g. "
                             f"{{pgd: {{eps: 2/255}}}}, not {entry!r}")
    if not isinstance(name, str):
        raise SuiteFileError(f"{at}the task name must be a string, not {name!r}")
    try:
        task = TASKS.get(name)
    except UnknownNameError as exc:
        raise SuiteFileError(f"{at}{exc}") from None
    if not isinstance(params, dict):
        raise SuiteFileError(f"{at}the parameters of {name} must be a mapping {{PARAM: VALUE}}, not {params!r}")
    if not params:
        return task
    allowed = overridable(task)
    hints = typing.get_type_hints(type(task))
    changes = {}
    for key, value in params.items():
        field = ALIASES.get(key, key) if ALIASES.get(key) in allowed else key
        if field not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            takes = ", ".join(allowed) if allowed else "no parameters"
            raise SuiteFileError(f"{at}unknown parameter {key!r} for task {name}.{hint} {name} takes: "
                                 f"{takes} (cbbench ls tasks --params)")
        try:
            changes[field] = _coerce(value, hints[field], field)
        except ValueError as exc:
            raise SuiteFileError(f"{at}{name}.{key}: {exc}") from None
    try:
        return dataclasses.replace(task, **changes)
    except (ValueError, TypeError) as exc:  # the task's own checks (__post_init__)
        raise SuiteFileError(f"{at}{name}: {exc}") from None


def _coerce(value, hint, field: str):
    """``value`` (as YAML read it) as the field's type, range-checked; ValueError says what is expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"expected a non-empty list, e.g. [{_example(args[0], field)}], not {value!r}")
        items = tuple(_coerce(v, args[0], field) for v in value)
        if len(set(items)) != len(items):
            raise ValueError(f"the list {list(value)} repeats an entry")
        return items
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, not {value!r}")
        low = 1 if field in AT_LEAST_ONE else 0
        if field == "severities":
            if not 1 <= value <= 5:
                raise ValueError(f"severities go from 1 to 5, not {value}")
        elif value < low:
            raise ValueError(f"must be at least {low}, not {value}")
        return value
    if hint is float:
        number = _number(value)
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"expected a finite number >= 0, not {value!r}")
        return number
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"expected a string, not {value!r}")
        text = value if isinstance(value, str) else repr(value)
        if field in PIXEL_FIELDS:
            from cbbench.attacks.epsilon import parse_pixel_value

            parse_pixel_value(text, "epsilon" if field == "epsilons" else field)  # "2/255" parsed, range [0, 1] checked
        if field == "corruptions":
            from cbbench.corruptions.catalog import ALL_CORRUPTIONS

            if text not in ALL_CORRUPTIONS:
                close = difflib.get_close_matches(text, ALL_CORRUPTIONS, n=1)
                hint_ = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown corruption {text!r}{hint_} Known: {', '.join(ALL_CORRUPTIONS)}")
        return text
    return value


def _number(value) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, not {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            num, _, den = value.partition("/")
            return float(num) / float(den) if den else float(num)
        except (ValueError, ZeroDivisionError):
            pass
    raise ValueError(f"expected a number such as 0.1 or 2/255, not {value!r}")


def _example(hint, field: str) -> str:
    return {"severities": "3", "corruptions": "gaussian_noise, fog", "epsilons": "0, 1/255, 2/255"}.get(
        field, "1" if hint is int else "...")


# ----------------------------------------------------------------------------------------------- files

def read_suite_file(path: str | Path) -> Suite:
    """Parse and check a suite file; relative checkpoint paths are read relative to the file."""
    import yaml

    path = Path(path).expanduser()
    where = f"suite file {path}"
    if not path.is_file():
        raise SuiteFileError(f"{where} not found; pass an existing .yaml file or a suite name (cbbench ls suites)")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise SuiteFileError(f"{where} is not a text (UTF-8) file; a suite file is YAML, see docs/suite_files.md") \
            from None
    except yaml.YAMLError as exc:
        raise SuiteFileError(f"{where} is not valid YAML: {str(exc).splitlines()[0]} "
                             f"({getattr(exc, 'problem_mark', '') or ''})".strip()) from None
    if not isinstance(data, dict):
        raise SuiteFileError(f"{where}: expected a mapping with keys {', '.join(SUITE_KEYS)}; see docs/suite_files.md")
    for key in data:
        if key not in SUITE_KEYS:
            close = difflib.get_close_matches(str(key), SUITE_KEYS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SuiteFileError(f"{where}: unknown key {key!r}.{hint} Allowed keys: {', '.join(SUITE_KEYS)}")
    for key in ("dataset", "models", "tasks"):
        if key not in data:
            raise SuiteFileError(f"{where}: missing key {key!r}; a suite names a dataset, models and tasks "
                                 "(docs/suite_files.md)")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\"):
        raise SuiteFileError(f"{where}: name must be a non-empty string without slashes, not {name!r}")
    if name in SUITES:
        raise SuiteFileError(f"{where}: name {name!r} is a built-in suite; choose another name, so that its "
                             "report does not mix with the built-in one")
    from cbbench.data.registry import DATASETS

    if data["dataset"] not in DATASETS:
        raise SuiteFileError(f"{where}: dataset: {DATASETS.unknown_message(str(data['dataset']))}")
    for key in ("models", "tasks"):
        if not isinstance(data[key], list) or not data[key]:
            raise SuiteFileError(f"{where}: {key} must be a non-empty list, not {data[key]!r}")
    models = [_model_entry(m, f"{where}: models[{i}]", path.parent) for i, m in enumerate(data["models"])]
    names = [m if isinstance(m, str) else m.name for m in models]
    if len(set(names)) != len(names):
        raise SuiteFileError(f"{where}: models: {sorted({n for n in names if names.count(n) > 1})} listed twice")
    for i, m in enumerate(models):
        if not isinstance(m, str) and m.baseline is not None and (m.baseline not in names or m.baseline == m.name):
            others = ", ".join(n for n in names if n != m.name) or "it is the only one"
            raise SuiteFileError(f"{where}: models[{i}]: baseline {m.baseline!r} must name another model of this "
                                 f"suite ({others})")
    baseline_of = {m.name: m.baseline for m in models if not isinstance(m, str) and m.baseline}
    for start in baseline_of:  # a -> b -> a: each would be compared with the other, Δ and -Δ
        chain = [start]
        while (after := baseline_of.get(chain[-1])) is not None and after not in chain:
            chain.append(after)
        if after is not None:
            raise SuiteFileError(f"{where}: models: the baselines go round in a circle "
                                 f"({' -> '.join([*chain, after])}); a baseline names no baseline")
    tasks = [task_from_entry(t, f"{where}: tasks[{i}]") for i, t in enumerate(data["tasks"])]
    seen = [t.name for t in tasks]
    if len(set(seen)) != len(seen):
        raise SuiteFileError(f"{where}: tasks: {sorted({n for n in seen if seen.count(n) > 1})} listed twice; one "
                             "setting per task and suite (put another setting in another suite file)")
    return Suite(name, str(data.get("description", "")), data["dataset"], tuple(models),
                 tuple(_plain(t) for t in data["tasks"]))


def _plain(entry):
    """A task entry as JSON-ready data for the run's configuration (YAML may give None for {pgd: })."""
    return entry if isinstance(entry, str) else {k: v or {} for k, v in entry.items()}


def _model_entry(entry, where: str, base: Path):
    """A zoo name or ad-hoc string (checked now), or a mapping: a zoo model's network with other weights."""
    from cbbench.models.spec import is_adhoc
    from cbbench.models.zoo import MODELS, resolve

    if isinstance(entry, str):
        if is_adhoc(entry):
            head, at, ckpt = entry.partition("@")
            if at and "://" not in ckpt and not Path(ckpt).expanduser().is_absolute():
                entry = f"{head}@{base / ckpt}"
            try:
                resolve(entry)
            except ValueError as exc:
                raise SuiteFileError(f"{where}: {exc}") from None
            return entry
        if entry not in MODELS:
            fix = (f"it looks like a checkpoint path: write timm:ARCH@{entry} or {{name: NAME, like: ZOO_MODEL, "
                   f"checkpoint: {entry}}}" if entry.endswith((".pth", ".pt", ".bin", ".safetensors"))
                   else MODELS.unknown_message(entry))
            raise SuiteFileError(f"{where}: {fix}")
        return entry
    if not isinstance(entry, dict):
        raise SuiteFileError(f"{where}: expected a model name or a mapping with keys {', '.join(MODEL_KEYS)}, "
                             f"not {entry!r}")
    unknown = [k for k in entry if k not in MODEL_KEYS]
    if unknown:
        raise SuiteFileError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(MODEL_KEYS)}")
    for key in ("name", "like"):
        if not isinstance(entry.get(key), str):
            raise SuiteFileError(f"{where}: {key!r} is required (a string): name your model and give the zoo model "
                                 "whose network it shares, e.g. {name: my_vit, like: demo_vit, checkpoint: my.pth}")
    if entry["like"] not in MODELS:
        raise SuiteFileError(f"{where}: like: {MODELS.unknown_message(entry['like'])}")
    if entry["name"] in MODELS:  # its rows would read as the zoo model's numbers
        raise SuiteFileError(f"{where}: name {entry['name']!r} is a zoo model's; give your model its own name")
    like = MODELS.get(entry["like"])
    weights = entry.get("weights", "file" if "checkpoint" in entry else None)
    if weights not in ("file", "random", "train"):
        raise SuiteFileError(f"{where}: give checkpoint: PATH (your weights), weights: train (trained by cbbench "
                             "with the recipe of like, e.g. for several seeds of your change) or weights: random "
                             f"(a seeded, untrained network for smoke tests), not weights={entry.get('weights')!r}")
    if "checkpoint" in entry and weights != "file":
        raise SuiteFileError(f"{where}: checkpoint given with weights: {weights}; keep one of them")
    if weights == "train" and like.recipe is None:
        raise SuiteFileError(f"{where}: weights: train needs a like model that cbbench trains (a recipe); "
                             f"{like.name} has none: give checkpoint: PATH")
    changes: dict[str, Any] = {"name": entry["name"], "weights": weights, "sha256": None,
                               "recipe": like.recipe if weights == "train" else None,
                               "checkpoint": None, "description": f"{like.arch} like {like.name}, from a suite file"}
    if weights == "file":
        ckpt = Path(str(entry.get("checkpoint", ""))).expanduser()
        ckpt = ckpt if ckpt.is_absolute() else base / ckpt
        changes["checkpoint"] = str(ckpt)
    if "arch" in entry:
        if not isinstance(entry["arch"], str) or not entry["arch"]:
            raise SuiteFileError(f"{where}: arch must be a timm architecture name, not {entry['arch']!r}")
        changes["arch"] = entry["arch"]
    if "arch" in entry or "arch_kwargs" in entry:  # your change to the network, e.g. {init_values: 0.1}
        extra = entry.get("arch_kwargs", {})
        if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
            raise SuiteFileError(f"{where}: arch_kwargs must be a mapping of timm.create_model keyword arguments, "
                                 f"e.g. {{init_values: 0.1}}, not {extra!r}")
        for k, v in extra.items():
            if not isinstance(v, (str, int, float, bool, list, type(None))):
                raise SuiteFileError(f"{where}: arch_kwargs.{k}: expected a number, string, true/false or list, "
                                     f"not {v!r}")
        # another architecture keeps only the head's size of like's arguments (depth, dims... are like's network's)
        inherited = {k: v for k, v in like.arch_kwargs if "arch" not in entry or k == "num_classes"}
        merged = {**inherited, **{k: tuple(v) if isinstance(v, list) else v for k, v in extra.items()}}
        changes["arch_kwargs"] = tuple(sorted(merged.items()))
        changed = ", ".join(f"{k}={v}" for k, v in extra.items())
        changes["description"] = (f"{changes.get('arch', like.arch)}{f' ({changed})' if changed else ''}, "
                                  f"otherwise like {like.name}, from a suite file")
    for key, kind in (("cb", bool), ("seed", int), ("baseline", str)):
        if key in entry:
            if not isinstance(entry[key], kind) or (kind is int and isinstance(entry[key], bool)):
                what = {bool: "true or false", int: "whole number", str: "string"}[kind]
                raise SuiteFileError(f"{where}: {key} must be a {what}, not {entry[key]!r}")
            changes[key] = entry[key]
    if not changes.get("cb", like.cb):
        changes.update(cb=False, cb_layers=None, cb_position="mlp", cb_alpha=0.5, cb_scaled=False)
    changes.setdefault("baseline", None)
    try:
        return dataclasses.replace(like, **changes)
    except ValueError as exc:
        raise SuiteFileError(f"{where}: {exc}") from None


def stored_suites(results: str | None) -> list[str]:
    """Suite names with runs in the results store: suite files and cbbench.evaluate runs are not registered."""
    from cbbench.paths import results_dir
    from cbbench.store import Store

    root = results_dir(results)
    if not (root / "cbbench.sqlite").is_file():
        return []
    with Store(root) as store:
        return store.suites()


def params_table(width: int | None = None) -> str:
    """``cbbench ls tasks --params``: each task's settable parameters and defaults, wrapped to ``width``."""
    import shutil

    from tabulate import tabulate

    from cbbench.tasks import TASKS

    width = width or shutil.get_terminal_size().columns
    rows = []
    for name, task in TASKS.items():
        params = overridable(task)
        text = "; ".join(f"{k}={_show(v)}" for k, v in params.items()) or "(none)"
        rows.append((name, text))
    first = max(len(r[0]) for r in rows)
    table = tabulate(rows, headers=["task", "parameters = default"], maxcolwidths=[None, max(20, width - first - 4)])
    return table + "\n\nSet in a suite file: tasks: [{pgd: {eps: 2/255}}] (docs/suite_files.md)"


def _show(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
