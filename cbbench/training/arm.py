"""One arm of a pair: a network with its own optimizer, lr schedule, EMA and loss, all timm's parts.

The loop feeds both arms the same micro-batches; an arm only turns a batch into
gradients and gradients into an update, the way timm's train.py does (forward
under autocast, loss, backward, optimizer step, ``lr_scheduler.step_update``, EMA
update), plus gradient accumulation with DDP's ``no_sync``.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from cbbench import distributed


def loss_for(recipe) -> nn.Module:
    """timm train.py's choice: soft-target CE after mixup (smoothing is in the targets), else smoothed CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if recipe.mixing:
        return SoftTargetCrossEntropy()
    if recipe.smoothing:
        return LabelSmoothingCrossEntropy(smoothing=recipe.smoothing)
    return nn.CrossEntropyLoss()


class Arm:
    """``net`` (already on ``device``) trained with ``recipe``; ``steps_per_epoch`` sizes the lr schedule."""

    def __init__(self, name: str, net: nn.Module, recipe, steps_per_epoch: int, device: torch.device, *,
                 amp: bool = False, channels_last: bool = False, compile: bool = False):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2
        from timm.utils import ModelEmaV3

        self.name, self.device, self.amp, self.clip_grad = name, device, amp, recipe.clip_grad
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.ema = ModelEmaV3(self.net, decay=recipe.model_ema_decay) if recipe.model_ema else None
        self.optimizer = create_optimizer_v2(self.net, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                             momentum=recipe.momentum, eps=recipe.opt_eps)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=recipe.sched, num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
            warmup_lr=recipe.warmup_lr, min_lr=recipe.min_lr, cooldown_epochs=recipe.cooldown_epochs,
            step_on_epochs=not recipe.sched_on_updates, updates_per_epoch=steps_per_epoch)
        self.ddp = None
        if distributed.world()[1] > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None)
        module = self.ddp or self.net
        self.forward = torch.compile(module) if compile else module
        self.loss_fn = loss_for(recipe)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # this epoch, this process
        self.micro_batches = 0

    def forward_backward(self, x: torch.Tensor, target: torch.Tensor, seed: int, last: bool, scale: float) -> None:
        """Accumulate the gradient of one micro-batch; DDP all-reduces on the ``last`` one of a step.

        ``seed`` seeds drop path: both arms and any number of processes draw the same masks.
        """
        torch.manual_seed(seed)
        with nullcontext() if self.ddp is None or last else self.ddp.no_sync():
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = self.loss_fn(self.forward(x), target)
            (loss * scale).backward()
        self.loss_sum += loss.detach()
        self.micro_batches += 1

    def step(self, num_updates: int) -> None:
        """Optimizer step, then the lr for the next update and the EMA (timm's train.py order)."""
        if self.clip_grad is not None:
            from timm.utils import dispatch_clip_grad

            dispatch_clip_grad(self.net.parameters(), value=self.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step_update(num_updates=num_updates)
        if self.ema is not None:
            self.ema.update(self.net, step=num_updates)

    def end_epoch(self, epoch: int) -> float:
        """Step the per-epoch schedule; the epoch's mean train loss over all processes (then reset)."""
        self.scheduler.step(epoch + 1)
        totals = torch.stack([self.loss_sum, torch.tensor(float(self.micro_batches), dtype=torch.float64,
                                                          device=self.device)])
        if distributed.world()[1] > 1:
            torch.distributed.all_reduce(totals)
        loss = (totals[0] / totals[1]).item()
        self.loss_sum.zero_()
        self.micro_batches = 0
        if loss != loss or abs(loss) == float("inf"):
            raise FloatingPointError(f"the {self.name} arm diverged at epoch {epoch + 1} (train loss {loss}); "
                                     "lower the lr (--set lr_base=...) or clip gradients (--set clip_grad=1.0)")
        return loss

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def weights(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """A plain CPU state_dict of the network (or its EMA), loadable into timm.create_model(arch)."""
        net = self.ema.module if ema else self.net
        return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}

    def state_dict(self) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "loss_sum": self.loss_sum.item(), "micro_batches": self.micro_batches}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.loss_sum.fill_(state["loss_sum"])
        self.micro_batches = state["micro_batches"]


@torch.no_grad()
def held_out_top1(nets: dict[str, nn.Module], ds, device: torch.device, batch_size: int, amp: bool) -> dict[str, float]:
    """Top-1 of each network on ``ds`` in one pass (images decoded once), sharded over processes.

    The eval transform and normalization are the network's own (timm's config), as
    ``cbbench run`` uses, so these numbers are comparable with its ``imagenet_clean``.
    """
    from cbbench.data.transforms import eval_transform_for, normalization_for

    first = next(iter(nets.values()))
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in normalization_for(first))
    rank, world = distributed.world()
    n_batches = -(-len(ds) // batch_size)
    counts = torch.zeros(len(nets) + 1, dtype=torch.float64, device=device)
    modes = {name: net.training for name, net in nets.items()}
    for net in nets.values():
        net.eval()
    for x, y, _ in ds.batches(batch_size, transform=eval_transform_for(first), only=range(rank, n_batches, world),
                              pin_memory=device.type == "cuda"):
        x, y = (x.to(device, non_blocking=True) - mean) / std, y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            for k, net in enumerate(nets.values()):
                counts[k] += (net(x).argmax(1) == y).sum()
        counts[-1] += len(y)
    if world > 1:
        torch.distributed.all_reduce(counts)
    for name, net in nets.items():
        net.train(modes[name])
    return {name: (counts[k] / counts[-1]).item() for k, name in enumerate(nets)}
