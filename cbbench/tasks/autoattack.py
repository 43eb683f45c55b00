"""AutoAttack on a fixed subset of images, resumable batch by batch.

Subset: the first ``n`` images (at most ``--limit``) of a fixed order. With
``dataset`` unset that is the suite's test set (digits, CIFAR...). On ImageNet
(``autoattack_imagenet``) it is RobustBench's fixed list of 5,000 val images,
dataset ``imagenet_val_rb5000`` read from the val folder in the list's order
(cbbench/data/classes/robustbench_imagenet_5000.txt), so ``n`` <= 5000 selects a
prefix of that list, as RobustBench does; the model's own eval transform applies.
Budgets: Linf 8/255 for CIFAR/digits-like 32x32 data, Linf 4/255 for ImageNet (RobustBench).

Each batch is one ``perturb`` call of ``run_batches`` and one stored part
(``batch{i}[{start}:{stop}]``), holding the adversarial images that differ from
the clean ones, AutoAttack's own predictions and its warnings: an interrupted
cell resumes at the first unfinished batch. (Under torchrun only rank 0's
batches are stored: ``CellStore.get_or_compute``.) Parts are float32 images, so
resuming costs storage: about 12 KB per attacked image at 32x32 (600 KB at 224).

Reported: ``accuracy`` = robust accuracy, an image being robust when the model
classifies AutoAttack's final x_adv correctly (AutoAttack's per-image worst case
over its attacks); ``clean_accuracy`` of the same images; ``attack_success_rate``
on the clean-correct ones. Cost on CPU: ~20 s per robust image for standard
AutoAttack on a tiny ViT at 32x32; the ``apgd`` variant (APGD-CE + APGD-T) is
the labelled cheaper option.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from cbbench import distributed
from cbbench.attacks.autoattack import check_variant, parse_budget
from cbbench.tasks.adversarial import AttackTask
from cbbench.tasks.base import (
    Batch, Metric, NamedByField, TaskContext, TaskResult, accuracy_metrics, attack_metrics, register_task, run_batches,
)


@dataclass(frozen=True)
class AutoAttackTask(NamedByField, AttackTask):
    variant: str = "standard"
    eps: str = "8/255"
    norm: str = "Linf"
    n: int = 100
    attack: str = "autoattack"  # kept: it is in the cell key
    task_name: str = "autoattack"
    # A dataset of its own (e.g. RobustBench's ImageNet list) instead of the suite's.
    dataset: str | None = None

    version = 2

    def __post_init__(self):
        check_variant(self.variant)
        parse_budget(self.eps, self.norm)
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n (the first n test images) must be an int >= 1, got {self.n!r}")

    @property
    def own_dataset(self) -> bool:
        return self.dataset is not None

    @property
    def headline(self) -> Metric:
        label = "AutoAttack" if self.variant == "standard" else f"AutoAttack-{self.variant}"
        return Metric("accuracy", f"{label} robust acc.", True)

    @property
    def seeded_per_batch(self) -> bool:
        return True  # each batch's attack reseeds torch from (seed, the batch's first index)

    @property
    def protocol(self) -> str:
        from cbbench.attacks.autoattack import VARIANTS

        what = ("AutoAttack standard" if self.variant == "standard"
                else f"AutoAttack subset '{self.variant}' (NOT standard AutoAttack)")
        return (f"{what}: {' + '.join(VARIANTS[self.variant])}, {self.norm} eps={self.eps}, pyautoattack 0.2.0, "
                f"the first {self.n} images of {self.dataset or 'the test set'} in its fixed order (at most --limit), "
                "per-image worst case; "
                "eval mode, fp32 grads")

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        from cbbench.attacks import autoattack as aa  # pyautoattack and foolbox load only when attacking

        sub = ctx.with_run(limit=self.n if ctx.run.limit is None else min(self.n, ctx.run.limit))
        if self.dataset is not None:
            from cbbench.tasks.imagenet import model_transform, resolve_dataset

            sub = dataclasses.replace(sub, dataset=resolve_dataset(ctx, self.dataset), transform=model_transform(ctx))
        clean = run_batches(model, sub, desc=f"{self.name} clean")
        current: dict[str, torch.Tensor] = {}
        warnings: list[str] = []

        def perturb(x: torch.Tensor, y: torch.Tensor, batch: Batch) -> torch.Tensor:
            idx = batch.index
            start, stop = int(idx[0]), int(idx[-1]) + 1

            def compute() -> dict[str, np.ndarray]:
                out = aa.autoattack(model, x, y, self.eps, norm=self.norm, variant=self.variant, seed=batch.seed)
                changed = (out.x_adv != x).flatten(1).any(dim=1)
                return {"index": idx.cpu().numpy(), "changed": changed.cpu().numpy(),
                        "x_changed": out.x_adv[changed].to(torch.float32).cpu().numpy(),
                        "aa_pred": out.pred.cpu().numpy(),
                        "warnings": np.array(out.warnings, dtype=str)}

            # no collective here: each torchrun rank attacks its own batches (CellStore.get_or_compute)
            part = sub.store.get_or_compute(f"batch{batch.number}[{start}:{stop}]", compute)
            if not np.array_equal(part["index"], idx.cpu().numpy()):
                raise RuntimeError(f"stored AutoAttack part for images {start}:{stop} holds other images")
            x_adv = x.clone()
            changed = torch.from_numpy(np.asarray(part["changed"], dtype=bool)).to(x.device)
            x_adv[changed] = torch.from_numpy(part["x_changed"]).to(x.device, x.dtype)
            current["autoattack_pred"] = torch.from_numpy(np.asarray(part["aa_pred"]))
            warnings.extend(str(w) for w in part["warnings"] if str(w) not in warnings)
            return x_adv

        # AutoAttack's own predictions travel with the outcomes (gathered across ranks under torchrun).
        # Not streamed: each batch's attack is already a stored part, and its warnings come from perturb.
        adv = run_batches(model, sub, perturb, desc=self.name, stream=False,
                          extras=lambda: {"autoattack_pred": current.pop("autoattack_pred")})
        notes = [f"AutoAttack warning: {w}" for w in distributed.gathered_unique(warnings)]
        from cbbench.tasks.imagenet import corrupt_note

        bad = sub.dataset.corrupt_within(sub.run.limit)
        notes += corrupt_note(self.name, [sub.dataset.relpath(i) for i in bad], [sub.dataset.corrupt[i] for i in bad])
        robust = adv["correct"].astype(bool)
        clean_correct = clean["correct"].astype(bool)
        own = adv["autoattack_pred"]
        disagree = int((own != adv["pred"]).sum())
        if disagree:
            notes.append(f"on {disagree} images AutoAttack's own prediction for x_adv differs from the "
                         "re-evaluation (non-deterministic model?); the re-evaluation is reported")
        if (robust & ~clean_correct).any():
            notes.append(f"{int((robust & ~clean_correct).sum())} images misclassified clean were classified "
                         "correctly on x_adv (non-deterministic model?); counted as not robust (the clean image "
                         "is inside the budget)")
            robust = robust & clean_correct
        metrics = {**accuracy_metrics({"correct": robust, "finite": adv["finite"]}),
                   **attack_metrics(robust, clean_correct)}
        metrics["num_images"] = float(len(robust))
        samples = dict(adv)
        samples["correct"] = robust
        samples["clean_correct"] = clean_correct
        samples["clean_pred"] = clean["pred"]
        return TaskResult(metrics, samples, notes)


for _task in (
    AutoAttackTask(variant="standard", eps="8/255", n=100, task_name="autoattack"),
    AutoAttackTask(variant="apgd", eps="8/255", n=100, task_name="autoattack_apgd"),
    AutoAttackTask(variant="standard", eps="4/255", n=5000, task_name="autoattack_imagenet",
                   dataset="imagenet_val_rb5000"),
):
    register_task(_task)
