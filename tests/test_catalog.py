"""The corruption catalog: torch-free, the ImageNet-C lists, and the task parameters (cell keys) it feeds."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cbbench.corruptions import catalog

SNAPSHOT = Path(__file__).parent / "data" / "task_params.json"


def task_identities() -> dict:
    """What of each registered task enters its cell key: name, version, params, seeded_per_batch (JSON form)."""
    from cbbench.tasks import TASKS

    out = {name: {"name": task.name, "version": task.version, "params": task.params(),
                  "seeded_per_batch": bool(task.seeded_per_batch)} for name, task in TASKS.items()}
    return json.loads(json.dumps(out, sort_keys=True, default=list))


def test_catalog_imports_without_torch_or_numpy():
    code = ("import sys, cbbench.corruptions.catalog; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lists_are_imagenet_cs():
    assert catalog.BENCHMARK_CORRUPTIONS == (
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
        "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
    assert catalog.HELDOUT_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert catalog.ALL_CORRUPTIONS == catalog.BENCHMARK_CORRUPTIONS + catalog.HELDOUT_CORRUPTIONS
    assert catalog.SEVERITIES == (1, 2, 3, 4, 5)
    in_families = [c for cs in catalog.FAMILIES.values() for c in cs]
    assert sorted(in_families) == sorted(catalog.ALL_CORRUPTIONS)  # each of the 19 in exactly one family
    assert list(catalog.FAMILIES) == ["noise", "blur", "weather", "digital"]


def test_task_params_match_the_snapshot():
    """Task params enter cell keys: a change here orphans stored cells. If it is deliberate, bump the task's
    version, say so in the README, and regenerate the snapshot with ``python -m tests.test_catalog``."""
    assert task_identities() == json.loads(SNAPSHOT.read_text())


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(task_identities(), indent=1, sort_keys=True) + "\n")
