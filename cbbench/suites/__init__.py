"""Suites are data: YAML files in this folder listing a dataset, models and tasks."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import yaml

from cbbench.registry import Registry


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    dataset: str
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    # The suite to run instead when a data root is given (the embedded default's ImageNet counterpart).
    with_data_root: str | None = None


def _load_all() -> Registry[Suite]:
    registry: Registry[Suite] = Registry("suite")
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text())
            unknown = set(data) - {"name", "description", "dataset", "models", "tasks", "with_data_root"}
            if unknown:
                raise ValueError(f"suite file {entry.name}: unknown keys {sorted(unknown)}")
            registry.register(data["name"], Suite(data["name"], data.get("description", ""), data["dataset"],
                                                  tuple(data["models"]), tuple(data["tasks"]),
                                                  data.get("with_data_root")))
    return registry


SUITES = _load_all()
