"""The resumable training state of a pair: one file, replaced atomically, read with weights_only=True.

It holds both arms (model, optimizer, scheduler, EMA, partial-epoch loss), the
position (epoch, next step, optimizer updates done), the per-epoch history and the
configuration the run started with. No RNG state is needed: every draw is seeded
from its position (cbbench/training/data.py), so (epoch, step) is the whole story.
"""
from __future__ import annotations

from pathlib import Path

import torch

STATE_FILE = "train_state.pth"
FORMAT = 1


def save_state(path: Path, *, config: dict, arms: dict, epoch: int, step: int, num_updates: int, history: list,
               epoch_seconds: float) -> None:
    from cbbench.train import _atomic_save

    _atomic_save({"format": FORMAT, "config": config, "arms": {name: arm.state_dict() for name, arm in arms.items()},
                  "epoch": epoch, "step": step, "num_updates": num_updates, "history": history,
                  "epoch_seconds": epoch_seconds}, path)


def read_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} was written by another version of cbbench's trainer (format "
                         f"{state.get('format')}, this one reads {FORMAT}); train into a new --out")
    return state


def check_same_run(saved: dict, config: dict, path: Path) -> None:
    """Resuming with another recipe, arch, seed, start or data would not be a resume: say what differs."""
    differ = _differences(saved, config)
    if differ:
        raise ValueError(f"--resume: {path} belongs to another run ({'; '.join(differ[:4])}"
                         f"{f'; +{len(differ) - 4} more' if len(differ) > 4 else ''}); rerun with the same arguments, "
                         "or train into a new --out")


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: saved {a!r}, now {b!r}")
    return out
