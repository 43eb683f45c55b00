"""Linf FGSM/PGD (cbbench.attacks.linf) on a tiny ViT trained on sklearn digits.

The model is timm's ViT (img 32, patch 8, dim 64, depth 2, 4 heads, 10 classes)
wrapped so that it takes [0, 1] pixels and normalizes inside, trained for 300
AdamW steps with a one-cycle schedule (~10 s on one CPU thread; ~93% accuracy
on the 397 held-out digits). The module runs
torch single-threaded: on a shared 2-core machine OpenMP's two threads make
these small ops up to 8x slower.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cbbench.attacks.linf import GradientMaskingError, NonFiniteGradientError, fgsm, pgd, validate_epsilon

N_EVAL = 128  # a power of two: see test_fgsm_matches_torchattacks


class Normalized(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x - 0.5) / 0.5)


class Rounded(nn.Module):
    """Quantizes inputs to 8 levels before the network: zero gradient almost everywhere."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 7) / 7)


class Detached(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.detach())


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).repeat(1, 3, 1, 1).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]


@pytest.fixture(scope="module")
def setup():
    import timm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x_tr, y_tr, x_te, y_te = _digits()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = Normalized(timm.create_model(
                "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                embed_dim=64, depth=2, num_heads=4, num_classes=10))
        gen = torch.Generator().manual_seed(1)
        opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.5e-3, total_steps=300, pct_start=0.1)
        model.train()
        for _ in range(300):
            idx = torch.randint(0, len(x_tr), (64,), generator=gen)
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            test_acc = (model(x_te).argmax(1) == y_te).float().mean().item()
        assert test_acc > 0.7, f"tiny ViT only reached {test_acc:.3f} test accuracy"
        x, y = x_te[:N_EVAL].clone(), y_te[:N_EVAL].clone()
        with torch.no_grad():
            clean_pred = model(x).argmax(1)
        yield model, x, y, clean_pred
    finally:
        torch.set_num_threads(threads)


def _pred(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def _acc(model, x, y):
    return (_pred(model, x) == y).float().mean().item()


def test_eps_zero_returns_clean_images(setup):
    model, x, y, clean_pred = setup
    x_f = fgsm(model, x, y, 0.0)
    x_p = pgd(model, x, y, 0.0, steps=2, step_size="0.5/255", generator=0)
    assert torch.equal(x_f, x) and torch.equal(x_p, x)
    assert torch.equal(_pred(model, x_p), clean_pred)


def test_robust_accuracy_decreases_with_eps(setup):
    model, x, y, clean_pred = setup
    clean = (clean_pred == y).float().mean().item()
    accs = []
    for eps in [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]:
        x_adv = pgd(model, x, y, eps, steps=10, step_size=max(eps / 4, 1e-4), generator=0)
        accs.append(_acc(model, x_adv, y))
    assert accs[0] == clean
    assert all(a <= clean for a in accs)
    assert all(b <= a for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < clean - 0.2, f"PGD at 8/255 barely hurts: clean {clean}, robust {accs}"


@pytest.mark.parametrize("eps", [1 / 255, 4 / 255, 8 / 255])
def test_perturbation_within_eps_and_bounds(setup, eps):
    model, x, y, _ = setup
    for x_adv in (fgsm(model, x, y, eps),
                  pgd(model, x, y, eps, steps=3, step_size=eps / 2, generator=1)):
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
        assert (x_adv - x).abs().max().item() <= eps + 1e-6
        assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
        assert not torch.equal(x_adv, x)


def test_dtype_no_grad_and_string_eps(setup):
    model, x, y, _ = setup
    x64 = x[:16].double()
    with torch.no_grad():  # callers often attack inside an eval loop
        x_adv = pgd(model, x64, y[:16], "4/255", steps=2, step_size="1/255", generator=0)
    assert x_adv.dtype == torch.float64
    assert (x_adv - x64).abs().max().item() <= 4 / 255 + 1e-6


def test_fgsm_matches_torchattacks(setup):
    # torchattacks uses mean-reduced cross-entropy and foolbox a sum: with a batch
    # of 128 (a power of two) the gradients differ by an exact factor, so the signs
    # and adversarial images agree up to float rounding of foolbox's projection.
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y, _ = setup
    ours = fgsm(model, x, y, 1 / 255)
    theirs = torchattacks.FGSM(model, eps=1 / 255)(x, y)  # no set_normalization_used
    assert (ours - theirs).abs().max().item() <= 1e-6
    assert torch.equal(_pred(model, ours), _pred(model, theirs))


def test_pgd_without_random_start_matches_torchattacks(setup):
    # Same update, projection and clipping order as foolbox; only the loss
    # reduction differs (see above), so we expect near bitwise agreement and
    # require identical predictions on >= 98% of images.
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y, _ = setup
    ours = pgd(model, x, y, 4 / 255, steps=10, step_size=1 / 255, random_start=False)
    theirs = torchattacks.PGD(model, eps=4 / 255, alpha=1 / 255, steps=10, random_start=False)(x, y)
    same = (_pred(model, ours) == _pred(model, theirs)).float().mean().item()
    assert same >= 0.98
    assert (ours - theirs).abs().max().item() <= 1e-6


def test_random_start_reproducible_and_global_rng_untouched(setup):
    import foolbox as fb

    model, x, y, _ = setup
    x, y = x[:32], y[:32]
    state = torch.get_rng_state()
    kw = dict(steps=5, step_size=0.5 / 255)
    a = pgd(model, x, y, 1 / 255, generator=torch.Generator().manual_seed(123), **kw)
    b = pgd(model, x, y, 1 / 255, generator=torch.Generator().manual_seed(123), **kw)
    c = pgd(model, x, y, 1 / 255, generator=123, **kw)
    d = pgd(model, x, y, 1 / 255, generator=124, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, d)
    assert all(p.grad is None for p in model.parameters())  # input-only gradients

    # Same start as stock foolbox after torch.manual_seed(123) (its global-RNG draw).
    with torch.random.fork_rng():
        torch.manual_seed(123)
        attack = fb.attacks.LinfPGD(abs_stepsize=0.5 / 255, steps=5, random_start=True)
        _, stock, _ = attack(fb.PyTorchModel(model, bounds=(0, 1), device="cpu"), x, y,
                             epsilons=1 / 255)
    model.zero_grad(set_to_none=True)  # eagerpy's loss.backward() filled .grad
    assert (stock - a).abs().max().item() <= 1e-6


def test_costs_one_forward_per_step(setup):
    model, x, y, _ = setup
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        fgsm(model, x[:8], y[:8], 1 / 255)
        assert len(calls) == 1
        pgd(model, x[:8], y[:8], 1 / 255, steps=5, step_size=0.5 / 255, generator=0)
        assert len(calls) == 6
    finally:
        handle.remove()


@pytest.mark.parametrize("wrapper", [Rounded, Detached])
def test_gradient_masking_is_detected(setup, wrapper):
    model, x, y, _ = setup
    masked = wrapper(model).eval()
    with pytest.raises(GradientMaskingError):
        fgsm(masked, x[:16], y[:16], 1 / 255)
    with pytest.raises(GradientMaskingError):
        pgd(masked, x[:16], y[:16], 1 / 255, steps=5, step_size=0.5 / 255, generator=0)


def test_a_nan_model_is_called_broken_not_gradient_masked(setup):
    model, x, y, _ = setup
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(p for p in broken.parameters() if p.ndim == 2).fill_(float("nan"))  # NaN > 0 is False: not "zero"
    with pytest.raises(NonFiniteGradientError, match="logits are not finite"):
        fgsm(broken, x[:8], y[:8], 1 / 255)


def test_train_mode_is_refused(setup):
    model, x, y, _ = setup
    training = copy.deepcopy(model).train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        fgsm(training, x[:4], y[:4], 1 / 255)
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        pgd(training, x[:4], y[:4], 1 / 255, steps=1, step_size=1 / 255)


def test_images_outside_unit_range_are_refused(setup):
    model, x, y, _ = setup
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(model, x[:4] * 255, y[:4], 1 / 255)


@pytest.mark.parametrize("value, expected", [
    ("1/255", 1 / 255), ("4/255", 4 / 255), (" 8 / 255 ", 8 / 255), ("0.0157", 0.0157),
    (0, 0.0), (1, 1.0), (np.float32(0.5), 0.5),
])
def test_validate_epsilon_accepts(value, expected):
    assert validate_epsilon(value) == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("value, message", [
    (2.0, r"did you mean 2/255\?"), (8, r"did you mean 8/255\?"), ("16", r"did you mean 16/255\?"),
    (-0.1, ">= 0"), ("-1/255", ">= 0"), ("abc", "cannot parse"), ("1/0", "cannot parse"),
    (math.nan, "finite"), (float("inf"), "finite"), (None, "pixel units"), (True, "pixel units"),
])
def test_validate_epsilon_rejects(value, message):
    with pytest.raises(ValueError, match=message):
        validate_epsilon(value)
