"""White-box Linf attacks (FGSM, PGD) via foolbox, on [0,1] inputs with normalization inside.

Clean accuracy of the same images is recorded beside the robust accuracy, and
every sample keeps both verdicts, so a report can say on which images CB
changes the outcome.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cbbench.attacks.epsilon import check_pgd_reach, validate_epsilon
from cbbench.tasks.base import (
    Batch, Metric, Task, TaskContext, TaskResult, accuracy_metrics, attack_metrics, register_task, run_batches,
)


class AttackTask(Task):
    """Every adversarial attack (white-box, transferred, AutoAttack, sweeps): one detail table for all of them."""

    kind = "attack"

    def details(self, cells, models) -> list:
        """Clean, robust accuracy and attack success of every attack cell, one row per task and model."""
        from cbbench.report.table import Table

        attacks = list(dict.fromkeys(t for _, t in cells))
        rows = []
        for t in attacks:
            for m in models:
                c = cells.get((m, t))
                if c and c.status == "ok":
                    rows.append({"task": t, "model": m, "clean (same images) ↑": f"{100 * c.metrics['clean_accuracy']:.1f}",
                                 "robust ↑": f"{100 * c.metrics['accuracy']:.1f}",
                                 "attack success on clean-correct ↓": f"{100 * c.metrics['attack_success_rate']:.1f}"})
        if not rows:
            return []
        note = _attack_note(cells, models, attacks)
        return ["## Adversarial: accuracy (%)", "", Table(rows), ""] + ([note, ""] if note else [])


def _attack_note(cells, models, attacks) -> str | None:
    """On digits attacks at one small ε give near-identical columns; say, from the data, by how much and why."""
    by_eps: dict[str, list[str]] = {}
    for t in attacks:
        params = next((cells[(m, t)].task_params for m in models if (m, t) in cells), {})
        if next(iter(cells.values())).dataset == "digits" and params.get("attack") in ("fgsm", "pgd"):
            by_eps.setdefault(str(params.get("headline_eps", params.get("eps"))), []).append(t)
    for eps, same in by_eps.items():
        spreads = []
        for m in models:
            acc = [cells[(m, t)].metrics.get("accuracy") for t in same if (m, t) in cells
                   and cells[(m, t)].status == "ok"]
            if len(acc) == len(same) and None not in acc:
                spreads.append(max(acc) - min(acc))
        if len(same) < 2 or not spreads or max(spreads) > 0.02:  # only columns that look alike need the note
            continue
        return (f"At ε = {eps}, {', '.join(same)} differ by at most {100 * max(spreads):.1f} pp per model "
                f"(identical for {sum(s == 0 for s in spreads)} of {len(spreads)}): a budget that small keeps each "
                "model in its locally linear regime, so FGSM's single signed-gradient step already reaches the corner "
                "of the ε-ball that the iterative attacks converge to, and the only images any of them breaks are "
                "the few within about ε of the decision boundary.")
    return None


@dataclass(frozen=True)
class LinfAttackTask(AttackTask):
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
        if self.attack == "pgd":
            check_pgd_reach(self.eps, self.steps, self.step_size)

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

        def attack(x: torch.Tensor, y: torch.Tensor, batch: Batch) -> torch.Tensor:
            if self.attack == "fgsm":
                return fgsm(model, x, y, self.eps)
            return pgd(model, x, y, self.eps, steps=self.steps, step_size=self.step_size,
                       random_start=self.random_start, generator=batch.seed)
        return attack

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        clean = run_batches(model, ctx, desc=f"{self.name} clean")
        adv = run_batches(model, ctx, self.perturb(model, ctx), desc=self.name)
        metrics = {**accuracy_metrics(adv), **attack_metrics(adv["correct"], clean["correct"])}
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
    register_task(_task)
