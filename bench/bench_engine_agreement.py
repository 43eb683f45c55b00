"""Does the torch corruption engine move a model like the reference does, on real ImageNet images?

Builds a data root from the real sample images (../shared/datasets/imagenet-sample: one
image per class) and evaluates one DeiT-Ti on ImageNet-C generated from it, per
corruption and severity, with the reference (imagecorruptions 1.1.2) and with the
engine, each with two seeds. No ImageNet weights exist offline, so the model has
seeded random weights and its accuracy is 0: what is compared is its *predictions*.
The noise floor is the agreement between two reference runs with different seeds;
the engine is faithful when engine-vs-reference agreement is within that floor.
Timings are the tasks' own compute times (clean pass + 95 cells + forward).

    python bench/bench_engine_agreement.py --n 20 --out results/bench/engine_agreement.md
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imagenet_sample import SAMPLE


def run_cli(args: list[str], results: Path) -> None:
    env = dict(os.environ, CBBENCH_RESULTS=str(results), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "cbbench", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cells(results: Path) -> dict[str, object]:
    from cbbench.store import Store

    store = Store(results)
    rows = sqlite3.connect(results / "cbbench.sqlite").execute("select key, task from cells").fetchall()
    return {task: store.get(key) for key, task in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="sample images (the first N in sorted order)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/engine_agreement.md"))
    args = parser.parse_args()
    if not SAMPLE.is_dir():
        sys.exit(f"the real sample images are not at {SAMPLE} (only in the development workspace)")
    import torch
    import timm

    from cbbench.corruptions.catalog import ALL_CORRUPTIONS

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data" / "imagenet").mkdir(parents=True)
        (tmp / "data" / "imagenet" / "val").symlink_to(SAMPLE)
        torch.manual_seed(0)
        weights = tmp / "deit_tiny_random.pth"
        torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), weights)
        model = f"timm:deit_tiny_patch16_224@{weights}"
        runs = {}
        for seed in (0, 1):
            results = tmp / f"seed{seed}"
            run_cli(["run", "--suite", "robustness_imagenet", "--data-root", str(tmp / "data"), "--models", model,
                     "--tasks", "imagenet_c_reference", "imagenet_c_generated", "--limit", str(args.n),
                     "--seed", str(seed), "--device", "cpu"], results)
            runs[seed] = cells(results)

    def preds(seed, task, c, s):
        return runs[seed][task].samples[f"{c}.{s}.pred"]

    def agree(a, b, c):
        return float(np.mean([np.mean(preds(*a, c, s) == preds(*b, c, s)) for s in range(1, 6)]))

    ref, gen = "imagenet_c_reference", "imagenet_c_generated"
    pairs = [("reference s0 vs reference s1 (noise floor)", (0, ref), (1, ref)),
             ("engine s0 vs engine s1", (0, gen), (1, gen)),
             ("reference s0 vs engine s0", (0, ref), (0, gen)),
             ("reference s1 vs engine s1", (1, ref), (1, gen)),
             ("reference s0 vs engine s1", (0, ref), (1, gen))]
    rows = []
    for c in ALL_CORRUPTIONS:
        rows.append([agree(a, b, c) for _, a, b in pairs])
    mean = np.mean(rows, axis=0)
    seconds = {t: [runs[s][t].wall_s for s in (0, 1)] for t in (ref, gen)}
    lines = [
        "# Corruption engine vs reference: agreement of one model's predictions on real images", "",
        f"Command: `python bench/bench_engine_agreement.py --n {args.n} --out {args.out}` "
        f"({time.perf_counter() - t_start:.0f} s in all)", "",
        f"Machine: 2 shared CPU cores, torch {torch.__version__}. Images: the first {args.n} real ImageNet sample "
        "images (sorted wnid order), through ImageNet-C's recipe (Resize 256 + CenterCrop 224, corruption, uint8, "
        "JPEG q85). Model: deit_tiny_patch16_224 with seeded random weights (no ImageNet weights offline), so "
        "accuracy is 0 for every input and the comparison is of its top-1 predictions: the fraction of images "
        "whose prediction is the same under the two inputs, mean over severities 1-5. Deterministic corruptions "
        "agree at 1.00 when the inputs are equal; random ones disagree even between two reference seeds, which "
        "sets the noise floor.", "",
        "| corruption | " + " | ".join(name for name, _, _ in pairs) + " |",
        "|---|" + "---:|" * len(pairs),
    ]
    for c, row in zip(ALL_CORRUPTIONS, rows):
        lines.append(f"| {c} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    lines.append("| **all 19** | " + " | ".join(f"**{v:.2f}**" for v in mean) + " |")
    lines += ["", f"Engine vs reference agreement {mean[2]:.2f} / {mean[3]:.2f} against a reference-vs-reference "
              f"floor of {mean[0]:.2f}: {'within' if min(mean[2], mean[3]) >= mean[0] - 0.05 else 'OUTSIDE'} "
              "the seed noise (tolerance 0.05).", "",
              f"Task compute time for {args.n} images x 95 cells (+ the clean pass and the forwards): reference "
              f"{seconds[ref][0]:.0f} / {seconds[ref][1]:.0f} s, engine {seconds[gen][0]:.0f} / {seconds[gen][1]:.0f} s "
              f"(seed 0 / seed 1), i.e. {np.mean(seconds[ref]) / np.mean(seconds[gen]):.1f}x end to end.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
