"""What a trained pair says about itself: per-epoch logs and the model card (JSON for tools, markdown for people)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

ARMS = ("baseline", "cb")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_logs(out: Path, history: list[dict]) -> None:
    """``log.csv`` and ``log.json``: one row per finished epoch (rewritten whole, so a resume cannot duplicate rows)."""
    _write_text(out / "log.json", json.dumps(history, indent=1) + "\n")
    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    _write_text(out / "log.csv", buf.getvalue())


def write_card(out: Path, card: dict) -> None:
    _write_text(out / "card.json", json.dumps(card, indent=1) + "\n")
    _write_text(out / "card.md", card_markdown(card))


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def card_markdown(card: dict) -> str:
    cfg, run = card["config"], card["runtime"]
    recipe = cfg["recipe"]
    arch = cfg["arch"]
    lines = [
        f"# {arch}: baseline and CB twin, recipe `{recipe['name']}`", "",
        f"Trained by cbbench {card['versions'].get('cbbench', '?')} as one pair: the same images, augmentations, "
        "mixup/cutmix draws and drop-path masks fed both arms in lockstep, from the same starting weights, "
        "so the two differ by Context Broadcasting alone.", "",
        f"- recipe: `{recipe['name']}` — {recipe['description']} (source: {recipe['source']})",
        f"- start: {cfg['init']['kind']}" + (f" ({card['data']['init']})" if card["data"].get("init") else "")
        + f", weights digest {cfg['init']['digest']}",
        f"- seed {cfg['seed']}; epochs done {card['epochs_done']} of {recipe['epochs']}; "
        f"{card['optimizer_steps']} optimizer steps of {recipe['batch_size']} images",
        f"- train data: {cfg['train']['images']:,} images in {cfg['train']['classes']} classes "
        f"({card['data']['train']}, file list digest {cfg['train']['digest']})",
        "- held-out: " + (f"{cfg['held_out']['images']:,} images of {card['data']['held_out']}"
                          if cfg["held_out"] else "none (no ImageNet val under the data root): top-1 not measured"),
        f"- ran on: {run['device']} x {run['processes']} process(es), micro-batch {recipe['micro_batch']} x "
        f"{run['accumulation']} accumulation step(s) per process, amp {run['amp']}, channels_last "
        f"{run['channels_last']}, compile {run['compile']}; {card['wall_seconds'] / 3600:.2f} h of wall time "
        "in the last session",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()) + f", python {card['python']}",
        "", "## Files", "", "| file | sha256 |", "|---|---|",
        *[f"| `{name}` | `{digest}` |" for name, digest in card["files"].items()],
        "", "Evaluate the pair:", "", "```bash",
        f"cbbench run --suite robustness_imagenet --models timm:{arch}@{card['out']}/baseline.pth 'timm:{arch}+cb@{card['out']}/cb.pth' "
        "--tasks imagenet_clean --data-root D",
        "```", "",
        "## Per epoch", "",
    ]
    has_ema = any("baseline_ema_top1" in row for row in card["history"])
    head = ["epoch", "images", "lr", "baseline loss", "cb loss", "baseline top-1 %", "cb top-1 %"]
    head += ["baseline EMA top-1 %", "cb EMA top-1 %"] if has_ema else []
    lines += ["| " + " | ".join(head + ["seconds"]) + " |", "|" + "---|" * (len(head) + 1)]
    for row in card["history"]:
        cells = [str(row["epoch"]), f"{row['images']:,}", f"{row['lr']:.3g}", f"{row['baseline_loss']:.4f}",
                 f"{row['cb_loss']:.4f}", _pct(row.get("baseline_top1")), _pct(row.get("cb_top1"))]
        cells += [_pct(row.get("baseline_ema_top1")), _pct(row.get("cb_ema_top1"))] if has_ema else []
        lines.append("| " + " | ".join(cells + [f"{row['seconds']:.0f}"]) + " |")
    lines += ["", "## Recipe (every value)", "", "| key | value |", "|---|---|",
              *[f"| {k} | `{json.dumps(v)}` |" for k, v in recipe.items()], ""]
    return "\n".join(lines)
