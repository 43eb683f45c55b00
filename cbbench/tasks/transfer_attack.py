"""Transfer attacks: adversarial examples crafted on the paired model, evaluated on this one.

The source is ``ctx.partner``: a CB model's baseline, or a baseline's CB twin
(the runner pairs them and adds the partner's weights digest to the cell key,
because the result depends on it: ``uses_partner = True``). The attack is the
stronger white-box PGD (Linf 4/255, 10 steps of 1/255, uniform random start)
run on the source with exactly the seeds of the ``pgd_strong`` task, so a
model used as its own source reproduces ``pgd_strong`` image by image.

Reported: ``accuracy`` = top-1 of this model on the transferred images (the
usual transfer robust accuracy; NOT a per-image worst case with the clean image:
a perturbation built against another model can, rarely, fix an image this model
got wrong), ``clean_accuracy`` of the same images, ``attack_success_rate`` =
share of this model's clean-correct images that the transferred images fool.
The source's white-box accuracy on its own examples is not computed.

Transfer attacks need no gradient of the evaluated model: a model that masks
its gradients still gets an honest (black-box) number here, while a source that
masks its gradients fails the cell with GradientMaskingError.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cbbench.attacks.epsilon import validate_epsilon
from cbbench.errors import CellNotApplicable
from cbbench.tasks.adversarial import AttackTask, LinfAttackTask
from cbbench.tasks.base import (
    Metric, NamedByField, TaskContext, TaskResult, accuracy_metrics, attack_metrics, register_task, run_batches,
)


@dataclass(frozen=True)
class TransferAttackTask(NamedByField, AttackTask):
    eps: str = "4/255"
    steps: int = 10
    step_size: str = "1/255"
    random_start: bool = True
    source: str = "partner"  # the only source so far: the paired baseline / CB twin
    attack: str = "pgd-transfer"  # kept: it is in the cell key
    task_name: str = "transfer_pgd"

    version = 1
    uses_partner: ClassVar[bool] = True

    def __post_init__(self):
        validate_epsilon(self.eps)
        if self.source != "partner":
            raise ValueError(f"unknown transfer source {self.source!r}; only 'partner' (the paired model) exists")
        self._source_attack()  # validates steps / step size at registration

    @property
    def seeded_per_batch(self) -> bool:
        return self.random_start

    def _source_attack(self) -> LinfAttackTask:
        return LinfAttackTask(attack="pgd", eps=self.eps, steps=self.steps, step_size=self.step_size,
                              random_start=self.random_start, task_name=f"{self.name} source")

    @property
    def headline(self) -> Metric:
        return Metric("accuracy", f"{self.name} robust acc. (transfer)", True)

    @property
    def protocol(self) -> str:
        start = "uniform random start" if self.random_start else "no random start"
        return (f"transfer: PGD Linf eps={self.eps}, {self.steps} steps of {self.step_size}, {start}, crafted on "
                "the paired model (CB twin / baseline) with pgd_strong's seeds, evaluated on this model; foolbox, "
                "eval mode, fp32 grads")

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        if ctx.partner is None:
            raise CellNotApplicable(
                f"{self.name} crafts its adversarial examples on the paired model, but this run has no "
                "baseline/CB pair for this model: run the model together with its baseline or CB twin")
        clean = run_batches(model, ctx, desc=f"{self.name} clean")
        adv = run_batches(model, ctx, self._source_attack().perturb(ctx.partner, ctx), desc=self.name)
        metrics = {**accuracy_metrics(adv), **attack_metrics(adv["correct"], clean["correct"])}
        metrics["fixed_by_attack"] = float((adv["correct"] & ~clean["correct"]).sum())
        samples = dict(adv)
        samples["clean_correct"] = clean["correct"]
        samples["clean_pred"] = clean["pred"]
        return TaskResult(metrics, samples)


register_task(TransferAttackTask())
