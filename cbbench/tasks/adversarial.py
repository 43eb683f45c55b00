"""White-box Linf attacks (FGSM, PGD) via foolbox, on [0,1] inputs with normalization inside.

Clean accuracy of the same images is recorded beside the robust accuracy, and
every sample keeps both verdicts, so a report can say on which images CB
changes the outcome.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cbbench.attacks.epsilon import validate_epsilon
from cbbench.tasks.base import TASKS, Metric, Task, TaskContext, TaskResult, accuracy_metrics, run_batches


@dataclass(frozen=True)
class LinfAttackTask(Task):
    attack: str
    eps: str
    steps: int = 1
    step_size: str | None = None
    random_start: bool = False
    task_name: str = ""

    version = 1

    def __post_init__(self):
        if self.attack not in ("fgsm", "pgd"):
            raise ValueError(f"unknown attack {self.attack!r}; use 'fgsm' or 'pgd'")
        validate_epsilon(self.eps)

    @property
    def name(self) -> str:
        return self.task_name or self.attack

    @property
    def headline(self) -> Metric:
        return Metric("accuracy", f"{self.name} robust acc.", True)

    @property
    def protocol(self) -> str:
        if self.attack == "fgsm":
            return f"FGSM Linf eps={self.eps} (one step, no random start), foolbox, eval mode, fp32 grads"
        start = "uniform random start" if self.random_start else "no random start"
        return (f"PGD Linf eps={self.eps}, {self.steps} steps of {self.step_size}, {start}, "
                "foolbox, eval mode, fp32 grads")

    @property
    def seeded_per_batch(self) -> bool:
        return self.attack == "pgd" and self.random_start

    def perturb(self, model, ctx: TaskContext):
        from cbbench.attacks.linf import fgsm, pgd  # foolbox loads only when attacking

        def attack(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            if self.attack == "fgsm":
                return fgsm(model, x, y, self.eps)
            seed = int(np.random.SeedSequence([ctx.seed, int(idx[0])]).generate_state(1)[0])
            return pgd(model, x, y, self.eps, steps=self.steps, step_size=self.step_size,
                       random_start=self.random_start, generator=seed)
        return attack

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        clean = run_batches(model, ctx, desc=f"{self.name} clean")
        adv = run_batches(model, ctx, self.perturb(model, ctx), desc=self.name)
        metrics = accuracy_metrics(adv)
        metrics["clean_accuracy"] = float(clean["correct"].mean())
        robust_given_clean = adv["correct"][clean["correct"]]
        metrics["attack_success_rate"] = float(1 - robust_given_clean.mean()) if len(robust_given_clean) else float("nan")
        samples = dict(adv)
        samples["clean_correct"] = clean["correct"]
        samples["clean_pred"] = clean["pred"]
        return TaskResult(metrics, samples)


for _task in (
    LinfAttackTask(attack="fgsm", eps="1/255"),
    LinfAttackTask(attack="pgd", eps="1/255", steps=5, step_size="0.5/255", random_start=True),
    LinfAttackTask(attack="pgd", eps="4/255", steps=10, step_size="1/255", random_start=True,
                   task_name="pgd_strong"),
):
    TASKS.register(_task.name, _task)
