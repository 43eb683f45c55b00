"""Epsilon sweeps: a robust-accuracy curve over Linf budgets (FGSM, PGD), through the existing adapters.

Why one adapter call per epsilon rather than foolbox's multi-epsilon call
(``attack(fmodel, x, y, epsilons=[...])``): foolbox's call shares no work
between epsilons either (it loops ``run`` over them and adds one forward per
epsilon to report success), draws its random start from torch's global RNG and
fills the weights' ``.grad``. cbbench.attacks.linf's ``fgsm``/``pgd`` keep the
gradient-masking check, input-only gradients and a seeded start, and every
point of the curve is then evaluated by ``run_batches`` like any other attack.
The clean images and every budget are evaluated in one pass over the data
(``run_batches(cells=...)``): each batch is read once, each budget's outcomes are
those of its own loop (its random starts are seeded per batch).

Conventions:

* eps 0 runs the FGSM adapter at eps 0 (one forward+backward per batch): any
  Linf attack with a zero budget returns the clean image, so this point must
  equal the clean accuracy per image; it also runs the gradient-masking check
  before any number is produced. A mismatch on more than 1% of the images
  raises (something in the model is not deterministic); fewer is recorded as a note.
* PGD's step is ``rel_step * eps`` (default eps/4, 10 steps, uniform random
  start). Every epsilon of a batch uses the same random-start seed (the seed
  of the fixed-eps ``pgd`` task for that batch), so the starts differ only by
  their scale: common random numbers across the curve.
* The reported curve is the per-image worst case over the budgets: an
  adversarial example found at eps1 is also inside every eps2 > eps1 ball, so
  an image counts as robust at eps_k only if it was classified correctly clean
  and under every attack with eps_j <= eps_k (cumulative AND). The raw
  per-epsilon outcomes are kept too (``{eps}.correct_raw``,
  ``accuracy_raw/eps/{eps}``); when the raw curve is not monotone for some
  images (a weak attack at a larger eps missed what a smaller one found, common
  for FGSM) the count is reported (``nonmonotone``) and a note is recorded.
* Headline: worst-case robust accuracy at ``headline_eps`` (default 1/255, the
  RVT budget), so the per-image ``correct`` array is boolean and the report can
  pair CB and baseline images (bootstrap CI and McNemar). The area under the
  worst-case curve, normalized by the largest eps (= mean robust accuracy over
  [0, eps_max] with linear interpolation), is reported beside it as ``auc``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cbbench.attacks.epsilon import validate_epsilon, validate_steps
from cbbench.tasks.adversarial import AttackTask
from cbbench.tasks.base import Metric, TaskContext, TaskResult, attack_metrics, register_task, run_batches

# A larger share of eps-0 images disagreeing with the clean run is a bug, not noise.
EPS0_MISMATCH_TOLERANCE = 0.01




@dataclass(frozen=True)
class EpsilonSweepTask(AttackTask):
    attack: str
    epsilons: tuple[str, ...] = ("0", "0.5/255", "1/255", "2/255", "4/255", "8/255")
    steps: int = 10
    rel_step: float = 0.25
    random_start: bool = True
    headline_eps: str = "1/255"
    task_name: str = ""

    version = 1

    def __post_init__(self):
        if self.attack not in ("fgsm", "pgd"):
            raise ValueError(f"unknown attack {self.attack!r}; use 'fgsm' or 'pgd'")
        object.__setattr__(self, "epsilons", tuple(self.epsilons))  # a list from YAML/CLI: keep it hashable
        if not self.epsilons:
            raise ValueError("an epsilon sweep needs at least one epsilon")
        values = [validate_epsilon(e) for e in self.epsilons]
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError(f"epsilons must be strictly increasing, got {list(self.epsilons)}")
        if self.headline_eps not in self.epsilons:
            raise ValueError(f"headline_eps {self.headline_eps!r} is not one of the epsilons {list(self.epsilons)}")
        if self.attack == "pgd":
            validate_steps(self.steps)
            if isinstance(self.rel_step, bool) or not isinstance(self.rel_step, (int, float)) \
                    or not 0 < self.rel_step <= 1:
                raise ValueError(f"rel_step must be a number in (0, 1] (the PGD step is rel_step * eps), "
                                 f"got {self.rel_step!r}")

    @property
    def name(self) -> str:
        return self.task_name or f"{self.attack}_sweep"

    @property
    def headline(self) -> Metric:
        return Metric("accuracy", f"{self.name} robust acc. @ {self.headline_eps}", True)

    @property
    def protocol(self) -> str:
        eps = ", ".join(self.epsilons)
        if self.attack == "fgsm":
            how = "FGSM (one step of eps, no random start)"
        else:
            start = "uniform random start (same seed at every eps)" if self.random_start else "no random start"
            how = f"PGD, {self.steps} steps of {self.rel_step:g} x eps, {start}"
        return (f"Linf {how} at eps in [{eps}] (pixel units), foolbox via cbbench.attacks.linf, eval mode, "
                f"fp32 grads; per-image worst case over eps <= each budget (cumulative); headline at "
                f"{self.headline_eps}, auc = area under the worst-case curve / max eps")

    @property
    def seeded_per_batch(self) -> bool:
        return self.attack != "fgsm" and self.random_start

    def perturb(self, model, ctx: TaskContext, eps: str):
        from cbbench.attacks.linf import fgsm, pgd  # foolbox loads only when attacking

        value = validate_epsilon(eps)

        def attack(x, y, batch):
            if value == 0 or self.attack == "fgsm":
                return fgsm(model, x, y, value)
            return pgd(model, x, y, value, steps=self.steps, step_size=self.rel_step * value,
                       random_start=self.random_start, generator=batch.seed)
        return attack

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        notes: list[str] = []
        clean_desc = f"{self.name} clean"
        passes: dict[str, dict] = {}

        def one_pass(todo: list[str]) -> dict[str, dict]:
            """The clean images and every missing budget, in one pass over the data (each batch read once)."""
            cells = {clean_desc: None, **{f"{self.name} {n}": self.perturb(model, ctx, n[len("eps="):]) for n in todo}}
            passes.update(run_batches(model, ctx, cells=cells))
            return {n: passes[f"{self.name} {n}"] for n in todo}

        raws = ctx.parts([f"eps={eps}" for eps in self.epsilons], one_pass)
        clean = passes[clean_desc] if clean_desc in passes else run_batches(model, ctx, desc=clean_desc)
        clean_correct = clean["correct"].astype(bool)
        samples: dict[str, np.ndarray] = {"clean_correct": clean_correct, "clean_pred": clean["pred"]}
        metrics: dict[str, float] = {"clean_accuracy": float(clean_correct.mean()),
                                     "nonfinite": float((~clean["finite"]).sum())}
        worst = clean_correct.copy()  # robust so far: clean and every smaller budget
        nonmonotone = np.zeros_like(worst)
        curve = []
        for eps in self.epsilons:
            raw = raws[f"eps={eps}"]
            raw_correct = raw["correct"].astype(bool)
            if validate_epsilon(eps) == 0:
                self._check_eps0(raw_correct, clean_correct, notes)
            nonmonotone |= raw_correct & ~worst
            worst = worst & raw_correct
            samples[f"{eps}.correct"] = worst.copy()
            samples[f"{eps}.correct_raw"] = raw_correct
            samples[f"{eps}.pred"] = raw["pred"]
            metrics[f"accuracy/eps/{eps}"] = float(worst.mean())
            metrics[f"accuracy_raw/eps/{eps}"] = float(raw_correct.mean())
            metrics["nonfinite"] += float((~raw["finite"]).sum())
            curve.append((validate_epsilon(eps), worst.copy()))
        if nonmonotone.any():
            notes.append(f"raw per-eps outcomes were not monotone for {int(nonmonotone.sum())} of {len(worst)} "
                         "images (an attack at a larger eps missed an adversarial example found at a smaller one, "
                         "or the image was misclassified clean); the reported curve is the cumulative worst case")
        metrics["nonmonotone"] = float(nonmonotone.sum())
        samples["correct"] = samples[f"{self.headline_eps}.correct"]
        metrics["accuracy"] = metrics[f"accuracy/eps/{self.headline_eps}"]
        metrics["attack_success_rate"] = attack_metrics(samples["correct"], clean_correct)["attack_success_rate"]
        samples["auc"] = _area(curve, clean_correct)
        metrics["auc"] = float(samples["auc"].mean())
        return TaskResult(metrics, samples, notes)

    @staticmethod
    def _check_eps0(raw_correct: np.ndarray, clean_correct: np.ndarray, notes: list[str]) -> None:
        mismatch = int((raw_correct != clean_correct).sum())
        if mismatch == 0:
            return
        msg = (f"eps 0 disagrees with the clean run on {mismatch} of {len(clean_correct)} images: the model's "
               "predictions are not deterministic (train-mode layers, non-deterministic kernels?)")
        if mismatch > EPS0_MISMATCH_TOLERANCE * len(clean_correct):
            raise RuntimeError(msg)
        notes.append(msg)


def _area(curve: list[tuple[float, np.ndarray]], clean_correct: np.ndarray) -> np.ndarray:
    """Per-image trapezoid area under the worst-case curve over [0, eps_max], divided by eps_max.

    The clean outcome is the point at eps 0 when 0 is not swept. With a single
    budget at 0 the area is the eps-0 outcome itself.
    """
    points = curve if curve[0][0] == 0 else [(0.0, clean_correct)] + curve
    eps_max = points[-1][0]
    if eps_max == 0:
        return points[-1][1].astype(np.float32)
    area = np.zeros(len(clean_correct), dtype=np.float64)
    for (e0, a0), (e1, a1) in zip(points, points[1:]):
        area += (e1 - e0) * (a0.astype(np.float64) + a1.astype(np.float64)) / 2
    return (area / eps_max).astype(np.float32)


for _task in (
    EpsilonSweepTask(attack="pgd", task_name="pgd_sweep"),
    EpsilonSweepTask(attack="fgsm", steps=1, rel_step=1.0, random_start=False, task_name="fgsm_sweep"),
):
    register_task(_task)
