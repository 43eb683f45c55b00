"""Loading weights safely: ``weights_only=True``, and errors that name the offending keys."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from cbbench.cb import cb_scale_keys
from cbbench.errors import CheckpointError


def check_file(path: str | Path) -> Path:
    """Cheap checks of a checkpoint file (exists, not empty, a torch container), before any work is done."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass an existing file (timm:ARCH@/path/to/ckpt.pth)")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): its download or save was interrupted; "
                              "save or download it again")
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip container, or a legacy pickle
        raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint (it starts with bytes {head!r}); "
                              "pass a file written by torch.save(model.state_dict(), path)")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = check_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"cannot read checkpoint {path}: {exc.__class__.__name__}: {first[:160]}. The file is truncated, "
            "damaged or holds objects other than tensors (cbbench loads with weights_only=True): save plain "
            "state_dicts, torch.save(model.state_dict(), path)."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_checked(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; on mismatch, one message listing missing, unexpected and mis-shaped keys."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        scales = set(cb_scale_keys(net))
        if missing and set(missing) <= scales and not unexpected and not shapes:  # named in full
            raise CheckpointError(
                f"checkpoint {source} has no learned CB scales for this scaled CB variant (cbbench's reading of "
                f"CB_S): {len(missing)} missing key(s), exactly the scales: {'; '.join(missing)}. Every other key "
                "fits: it is a baseline or unscaled-CB checkpoint. Pass a checkpoint trained with the scaled "
                "variant, or start from this one explicitly with "
                "cbbench.load_baseline_into_scaled_cb(net, state) (scales set to ones)."
            )
        parts = []
        for label, keys in (("mis-shaped", shapes), ("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {'; '.join(keys[:5])}{more}")
        hint = (" The model has learned CB scales (a scaled CB variant); a baseline checkpoint lacks them."
                if scales & set(missing) else "")
        raise CheckpointError(
            f"checkpoint {source} does not fit the model architecture. " + " | ".join(parts)
            + ". Check that the model name/arch matches the checkpoint (e.g. tiny vs small, num_classes)." + hint
        )
    net.load_state_dict(state, strict=True)


def weights_digest(net: nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes): identifies the weights, whatever their source."""
    h = hashlib.sha256()
    for key, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()[:16]


def load_baseline_into_scaled_cb(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state_dict") -> None:
    """Load a baseline (or unscaled CB) state_dict into a scaled CB variant, explicitly.

    Everything must fit strictly except the learned CB scales, which a baseline cannot
    hold; they are set to ones (the unscaled variant's function). Any other mismatch
    raises the same error as a strict load.
    """
    scales = cb_scale_keys(model)
    own = model.state_dict()
    present = [k for k in scales if k in state]
    if present:
        raise ValueError(f"{source} already holds CB scales ({', '.join(present)}); load it strictly instead")
    load_state_dict_checked(model, {**state, **{k: torch.ones_like(own[k]) for k in scales}}, source)
