"""Where a pair starts: a checked architecture and output folder, and one set of weights for both arms."""
from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import nn


def check_arch(arch: str) -> None:
    """An unknown timm name fails here, before any data is read, with the closest names."""
    import difflib

    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown timm architecture {arch!r}.{hint} List them with "
                         "python -c \"import timm; print(timm.list_models('*deit*'))\"")


def check_out(out: Path) -> None:
    """--out must be a folder cbbench can write (made if absent)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # per process: torchrun ranks check at once
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write to --out {out} ({exc.strerror or exc}); pass a folder you can write to") from None


def starting_network(arch: str, model_kwargs: dict, seed: int, pretrained: bool, init: str | Path | None,
                     recipe_name: str, recipe_init: str) -> tuple[nn.Module, dict]:
    """(the baseline network, how it started): seeded random, timm's pretrained weights or an --init file."""
    from cbbench.models.build import _timm_pretrained, build_network
    from cbbench.models.checkpoint import load_state_dict_checked, read_state_dict, weights_digest
    from cbbench.models.spec import ModelSpec

    if pretrained and init:
        raise ValueError("pass either --pretrained or --init CKPT, not both")
    if recipe_init == "pretrained" and not (pretrained or init):
        raise ValueError(f"recipe {recipe_name} fine-tunes a trained baseline: pass --pretrained (timm's weights) "
                         "or --init /path/to/baseline.pth")
    spec = ModelSpec(name=arch, arch=arch, arch_kwargs=tuple(sorted(model_kwargs.items())), weights="random",
                     seed=seed)
    if pretrained:
        net, how = _timm_pretrained(spec), {"kind": "pretrained", "source": f"timm's pretrained {arch}"}
    else:
        net = build_network(spec)
        how = {"kind": "init", "source": str(Path(init).resolve())} if init else {"kind": "scratch", "source": None}
        if init:
            load_state_dict_checked(net, read_state_dict(init), f"--init {init}")
    how["digest"] = weights_digest(net)
    return net, how


def cb_twin(net: nn.Module, arch: str) -> nn.Module:
    """A copy of ``net`` with CB in every block: the same weights (CB adds no parameters)."""
    from cbbench.cb import add_context_broadcasting

    try:
        return add_context_broadcasting(copy.deepcopy(net))
    except TypeError as exc:
        raise ValueError(f"{arch} cannot get Context Broadcasting: {exc}") from None
