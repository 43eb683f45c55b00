"""Transfer learning: a linear probe on frozen features, and a short full fine-tune, on a downstream dataset.

Both tasks report top-1 on the downstream test split, evaluated through the one
batch loop (``run_batches``) with a context whose dataset is that test split.
Every number of the recipe is a task field, so it is part of the cache key, and
a baseline and its CB twin get exactly the same recipe, data and seed.

* ``linear_probe``: the model is frozen. Features are its pre-logits
  (``net.forward_head(net.forward_features(x_normalized), pre_logits=True)``:
  the class token after the final norm for ViT/DeiT), extracted in eval mode
  without augmentation. They are standardized with the train split's mean and
  std, and a multinomial logistic regression (full-batch L-BFGS from zero, fixed
  L2, float64, deterministic) is fitted on them. The fitted classifier is
  folded into one linear layer on top of the frozen model for the test pass.
* ``finetune``: a deep copy of the model (the evaluated model is never touched)
  gets a new zero-initialized head for the downstream classes and is trained end
  to end (CB, if present, stays in place) with the demo pretraining recipe's
  hyperparameters (``digits_tiny``: AdamW lr 2e-3, wd 0.05, label smoothing 0.1)
  and random shifts of up to 2 px, for 5 epochs on 200 images per class, 10%
  linear warmup then cosine decay per step. Data order and augmentation come
  from a generator seeded by (task seed, run seed, epoch). (At 3 epochs the copy
  was still far from fitting its train split and the top-1 moved by 3-5 points
  between recipe seeds; at 5 it moved by 0-3.)

The run's ``--limit`` limits the downstream test images evaluated, as in every
task; ``train_per_class`` (None: all) caps the training images, taken
class-balanced with the task seed (the probe uses all of them by default: it is
cheap; the fine-tune 200 per class, to stay within seconds on a CPU).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cbbench.data.downstream import Downstream, ResizedTensorDataset, input_size, load_downstream
from cbbench.tasks.base import Metric, Task, TaskContext, TaskResult, accuracy_metrics, register_task, run_batches
from cbbench.train import RECIPES, lr_at, random_shift, train_step


def downstream_for(task, model, ctx: TaskContext) -> Downstream:
    """The task's downstream dataset at the model's input size, from the run's data root when it needs one."""
    return load_downstream(task.dataset, ctx.run.data_root, input_size(model))


def recipe_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (task seed, run seed, epoch...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def balanced_subset(labels: torch.Tensor, per_class: int | None, seed: int) -> torch.Tensor:
    """Indices of at most ``per_class`` samples of every class (all when None), chosen with ``seed``, sorted."""
    if per_class is None:
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    keep = []
    for c in labels.unique().tolist():
        keep.append(order[labels[order] == c][:per_class])
    return torch.cat(keep).sort().values


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pre-logits features of a ``Normalized`` timm model for [0,1] images (normalizing as the model does)."""
    net = model.net
    if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
        raise TypeError(f"{type(net).__name__} has no timm forward_features/forward_head to take features from")
    return net.forward_head(net.forward_features((x - model.mean) / model.std), pre_logits=True)


@torch.inference_mode()
def extract_features(model: nn.Module, dataset: ResizedTensorDataset, index: torch.Tensor, batch_size: int,
                     device: torch.device) -> torch.Tensor:
    """Frozen pre-logits features of the training images (not an evaluation: no outcomes are recorded)."""
    feats = []
    for start in range(0, len(index), batch_size):
        x = dataset.take(index[start:start + batch_size]).to(device)
        feats.append(pre_logits(model, x).float().cpu())
    return torch.cat(feats)


class ProbeModel(nn.Module):
    """Frozen model + linear classifier on its pre-logits features: [0,1] images in, logits out."""

    def __init__(self, model: nn.Module, head: nn.Linear):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pre_logits(self.model, x).float())


def fit_linear_probe(features, labels, num_classes: int, l2: float = 1e-4, max_iter: int = 500,
                     standardize: bool = True, device: torch.device | str | None = None) -> tuple[nn.Linear, dict]:
    """Multinomial logistic regression on features: full-batch L-BFGS (strong Wolfe) in float64.

    Objective: mean cross-entropy + ``l2``/2 * ||W||^2 (bias not penalized) on features
    standardized with their own mean and std (scikit-learn's ``C`` = 1 / (l2 * N)).
    Zero initialization and full batches: deterministic, no seed needed. Returns a
    float32 ``nn.Linear`` on the raw features (standardization folded in) and fit info
    (train accuracy, iterations, final gradient max-norm, converged).
    """
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64, device=device)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=f.device)
    if standardize:
        mu, sd = f.mean(dim=0), f.std(dim=0, unbiased=False)
        sd = torch.where(sd > 1e-12, sd, torch.ones_like(sd))
    else:
        mu, sd = torch.zeros(f.shape[1], dtype=f.dtype, device=f.device), torch.ones(f.shape[1], dtype=f.dtype,
                                                                                        device=f.device)
    z = (f - mu) / sd
    weight = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=f.dtype, device=f.device, requires_grad=True)
    tol = 1e-6
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=tol,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        closure()
    grad = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
    with torch.no_grad():
        train_acc = float(((z @ weight.T + bias).argmax(1) == y).double().mean())
        head = nn.Linear(f.shape[1], num_classes).to(f.device)
        head.weight.copy_((weight / sd).float())
        head.bias.copy_((bias - (weight / sd) @ mu).float())
    n_iter = int(opt.state[weight].get("n_iter", 0))
    info = {"train_accuracy": train_acc, "iterations": n_iter, "grad_max": grad, "converged": grad <= tol or
            n_iter < max_iter}
    return head, info


@dataclass(frozen=True)
class DownstreamTask(Task):
    """Adapt the model to a downstream dataset on (a class-balanced part of) its train split, then top-1 on its
    test split. Subclasses say how (``adapt``); the data, the subset and the evaluation are the same for both."""

    dataset: str = "mnist5k"
    train_per_class: int | None = None
    seed: int = 0

    version = 1
    kind = "transfer_learning"

    def adapt(self, model: nn.Module, data: Downstream, index: torch.Tensor, ctx: TaskContext
              ) -> tuple[nn.Module, dict[str, float], list[str]]:
        """(the model to evaluate on the test split, metrics of the adaptation, notes)."""
        raise NotImplementedError

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        data = downstream_for(self, model, ctx)
        index = balanced_subset(data.train.labels, self.train_per_class, self.seed)
        adapted, adapt_metrics, notes = self.adapt(model, data, index, ctx)
        # Not streamed: the model evaluated is trained in this task, so a rerun's batches may not match stored ones.
        out = run_batches(adapted, replace(ctx, dataset=data.test), desc=f"{self.name.replace('_', ' ')} "
                          f"{self.dataset}", stream=False)
        metrics = accuracy_metrics(out)
        metrics["top5_accuracy"] = float(out["correct_top5"].mean())
        metrics["num_train"] = float(len(index))
        metrics["num_test"] = float(len(out["correct"]))
        notes = [f"downstream {data.description}: {len(index)} train / {len(out['correct'])} test images", *notes]
        return TaskResult({**metrics, **adapt_metrics}, out, notes)


@dataclass(frozen=True)
class LinearProbeTask(DownstreamTask):
    l2: float = 1e-4
    max_iter: int = 500
    standardize: bool = True

    name = "linear_probe"
    headline = Metric("accuracy", "linear probe top-1", True)

    @property
    def protocol(self) -> str:
        per_class = "" if self.train_per_class is None else f" ({self.train_per_class}/class)"
        fit = f"full-batch L-BFGS from zero, mean CE + {self.l2}/2 ||W||^2, <= {self.max_iter} iterations"
        return (f"linear probe on frozen pre-logits features, downstream {self.dataset}: features standardized, "
                f"multinomial logistic regression ({fit}) on the train split{per_class}, top-1 on the test split")

    def adapt(self, model, data, index, ctx):
        feats = extract_features(model, data.train, index, ctx.run.batch_size, ctx.run.device)
        head, info = fit_linear_probe(feats, data.train.labels[index], data.num_classes, self.l2, self.max_iter,
                                      self.standardize, device=ctx.run.device)
        metrics = {"train_accuracy": info["train_accuracy"], "feature_dim": float(feats.shape[1]),
                   "lbfgs_iterations": float(info["iterations"])}
        notes = [] if info["converged"] else [
            f"L-BFGS stopped at {self.max_iter} iterations with gradient max-norm {info['grad_max']:.2g}"]
        return ProbeModel(model, head).eval(), metrics, notes


def finetune_copy(model: nn.Module, train: ResizedTensorDataset, index: torch.Tensor, num_classes: int,
                  task: "FinetuneTask", run_seed: int, device: torch.device) -> tuple[nn.Module, list[dict]]:
    """A fine-tuned deep copy of ``model`` with a new head for ``num_classes``; ``model`` is left untouched."""
    tuned = copy.deepcopy(model)
    tuned.weights_digest = None  # the copy's weights are not the evaluated model's any more
    net = tuned.net
    with torch.random.fork_rng(devices=[]):  # reset_classifier draws an init we overwrite: keep global RNG as is
        net.reset_classifier(num_classes)
    nn.init.zeros_(net.head.weight)
    nn.init.zeros_(net.head.bias)
    tuned.to(device).train()
    for p in tuned.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(tuned.parameters(), lr=task.lr, weight_decay=task.weight_decay)
    steps_per_epoch = math.ceil(len(index) / task.batch_size)
    total = task.epochs * steps_per_epoch
    warmup = max(1, round(task.warmup_fraction * total))
    labels = train.labels[index]
    history = []
    with torch.enable_grad():
        for epoch in range(task.epochs):
            gen = torch.Generator().manual_seed(recipe_seed(task.seed, run_seed, epoch))
            order = torch.randperm(len(index), generator=gen)
            loss_sum = correct = 0.0
            for i, start in enumerate(range(0, len(index), task.batch_size)):
                pick = order[start:start + task.batch_size]
                x = random_shift(train.take(index[pick]), task.max_shift, gen).to(device)
                y = labels[pick].to(device)
                batch_loss, batch_correct = train_step(
                    tuned, x, y, opt, lr_at(epoch * steps_per_epoch + i, total, warmup, task.lr),
                    task.label_smoothing, f"fine-tuning at epoch {epoch + 1}")
                loss_sum += batch_loss
                correct += batch_correct
            history.append({"epoch": epoch + 1, "loss": loss_sum / len(index), "train_acc": correct / len(index)})
    return tuned.eval(), history


# The optimizer settings come from the demo models' pretraining recipe (one place states them); the schedule,
# augmentation and data are the fine-tune's own (5 short epochs, 10% warmup, 2 px shifts, 200 images per class).
_PRETRAINING = RECIPES.get("digits_tiny")


@dataclass(frozen=True)
class FinetuneTask(DownstreamTask):
    epochs: int = 5
    batch_size: int = _PRETRAINING.batch_size
    lr: float = _PRETRAINING.lr
    weight_decay: float = _PRETRAINING.weight_decay
    warmup_fraction: float = 0.1
    label_smoothing: float = _PRETRAINING.label_smoothing
    max_shift: int = 2
    train_per_class: int | None = 200

    name = "finetune"
    headline = Metric("accuracy", "fine-tune top-1", True)

    @property
    def protocol(self) -> str:
        return (f"full fine-tune of a copy (new zero-init head, CB kept), downstream {self.dataset}: AdamW "
                f"lr {self.lr}, wd {self.weight_decay}, batch {self.batch_size}, {self.epochs} epochs, warmup "
                f"{self.warmup_fraction:.0%} then cosine, label smoothing {self.label_smoothing}, shifts "
                f"<= {self.max_shift} px, seed ({self.seed}, run seed); top-1 on the test split")

    def adapt(self, model, data, index, ctx):
        tuned, history = finetune_copy(model, data.train, index, data.num_classes, self, ctx.run.seed, ctx.run.device)
        return tuned, {"train_loss": history[-1]["loss"], "train_accuracy": history[-1]["train_acc"]}, []


register_task(LinearProbeTask())
register_task(FinetuneTask())
