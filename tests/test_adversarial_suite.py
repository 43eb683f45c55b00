"""Epsilon sweeps, transfer attacks and AutoAttack on tiny ViTs trained on sklearn digits.

Two models, timm's ViT (img 32, patch 8, dim 64, depth 2, 4 heads, 10 classes)
wrapped to take [0, 1] pixels: a baseline trained for 250 AdamW steps (~85-90%
test accuracy) and its CB twin, fine-tuned for 60 steps from the baseline's
weights (together ~15 s on one idle thread). Torch runs single-threaded in this module: on a shared 2-core machine
OpenMP's two threads make these small ops much slower.
"""
from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cbbench.attacks.autoattack as aa_adapter
from cbbench.attacks.linf import GradientMaskingError
from cbbench.cb import add_context_broadcasting
from cbbench.data.base import TensorDataset
from cbbench.data.registry import load_dataset
from cbbench.data.digits import load_digits_split
from cbbench.models.build import Normalized
from cbbench.seeding import batch_seed
from cbbench.store import pack, unpack
from cbbench.tasks.adversarial import LinfAttackTask
from cbbench.tasks.autoattack import AutoAttackTask
from cbbench.tasks.base import TASKS, TaskContext
from cbbench.tasks.context import RunSettings
from cbbench.tasks.epsilon_sweep import EpsilonSweepTask
from cbbench.tasks.transfer_attack import TransferAttackTask
from tests.conftest import task_context, tiny_vit

N = 32  # images per sweep/transfer test; batches of 16 (a power of two: see the torchattacks tests)


class Rounded(nn.Module):
    """Quantizes inputs to 8 levels before the network: zero input gradient almost everywhere."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 7) / 7)


class Detached(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.detach())


class Softmaxed(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).softmax(dim=1)


def _train(model: nn.Module, steps: int, lr: float, seed: int = 0) -> nn.Module:
    x, y = load_digits_split("train")
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval().zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module")
def models():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            base = _train(Normalized(tiny_vit(seed=0, embed_dim=64), (0.5,) * 3, (0.5,) * 3), 250, 2e-3)
            # The CB twin starts from the baseline's weights (CB has no parameters) and is fine-tuned
            # briefly: a different, correlated model, as a real twin is, at a fraction of the cost.
            twin = copy.deepcopy(base)
            twin.net = add_context_broadcasting(twin.net)
            twin = _train(twin, 60, 1e-3, seed=1)
        data = load_dataset("digits")
        for m in (base, twin):
            with torch.no_grad():
                acc = (m(data.images).argmax(1) == data.labels).float().mean().item()
            assert acc > 0.6, f"tiny ViT only reached {acc:.3f} test accuracy"
        yield base, twin, data
    finally:
        torch.set_num_threads(threads)


def ctx(data, limit=N, batch_size=16, **kw):
    return task_context(data, limit=limit, batch_size=batch_size, **kw)


# ----------------------------------------------------------------------------- epsilon sweep


@pytest.fixture(scope="module")
def pgd_sweep(models):
    base, _, data = models
    return TASKS.get("pgd_sweep").evaluate(base, ctx(data))


def test_sweep_reports_every_eps_and_is_a_worst_case_curve(pgd_sweep):
    r = pgd_sweep
    eps = ["0", "0.5/255", "1/255", "2/255", "4/255", "8/255"]
    curve = [r.metrics[f"accuracy/eps/{e}"] for e in eps]
    clean = r.metrics["clean_accuracy"]
    # eps 0 is the clean accuracy, image by image
    np.testing.assert_array_equal(r.samples["0.correct"], r.samples["clean_correct"])
    assert curve[0] == clean == r.samples["clean_correct"].mean()
    # never above clean, weakly falling with eps, per image too
    assert all(a <= clean for a in curve) and all(b <= a for a, b in zip(curve, curve[1:])), curve
    for e0, e1 in zip(eps, eps[1:]):
        assert not (r.samples[f"{e1}.correct"] & ~r.samples[f"{e0}.correct"]).any()
    assert curve[-1] < clean - 0.3, f"PGD at 8/255 barely hurts: {curve}"
    # headline and its per-image array
    assert r.metrics["accuracy"] == r.metrics["accuracy/eps/1/255"]
    np.testing.assert_array_equal(r.samples["correct"], r.samples["1/255.correct"])
    assert r.samples["correct"].dtype == bool and r.samples["correct"].shape == (N,)
    assert 0 <= r.metrics["auc"] <= clean
    assert r.metrics["auc"] == pytest.approx(r.samples["auc"].mean(), abs=1e-6)
    values = np.array([0, 0.5, 1, 2, 4, 8]) / 255
    assert r.metrics["auc"] == pytest.approx(np.trapezoid(curve, values) / values[-1], abs=1e-6)
    assert set(r.metrics) >= {"clean_accuracy", "attack_success_rate", "nonmonotone", "nonfinite"}


def test_sweep_matches_the_fixed_eps_pgd_task_with_the_same_start(models, pgd_sweep):
    base, _, data = models
    # The sweep's 1/255 point is PGD-10 with steps of eps/4 and the pgd task's per-batch seeds.
    fixed = LinfAttackTask(attack="pgd", eps="1/255", steps=10, step_size="0.25/255", random_start=True,
                           task_name="pgd10").evaluate(base, ctx(data))
    np.testing.assert_array_equal(fixed.samples["correct"], pgd_sweep.samples["1/255.correct_raw"])
    np.testing.assert_array_equal(fixed.samples["pred"], pgd_sweep.samples["1/255.pred"])


def test_fgsm_sweep_matches_torchattacks(models):
    # torchattacks averages the loss over the batch and foolbox sums it: with batches of 16 the
    # gradients differ by an exact power of two, so the signs agree. Tolerance: at most 1 of 32
    # predictions may differ per eps (float rounding in the projection); observed: 0.
    torchattacks = pytest.importorskip("torchattacks")
    base, _, data = models
    r = TASKS.get("fgsm_sweep").evaluate(base, ctx(data))
    x, y = data.images[:N], data.labels[:N]
    for eps in ("0.5/255", "1/255", "2/255", "4/255", "8/255"):
        value = float(eps.split("/")[0]) / 255
        theirs = torch.cat([torchattacks.FGSM(base, eps=value)(x[i:i + 16], y[i:i + 16]) for i in (0, 16)])
        with torch.no_grad():
            pred = base(theirs).argmax(1).numpy()
        assert (pred != r.samples[f"{eps}.pred"]).sum() <= 1, eps
        assert abs((pred == y.numpy()).mean() - r.metrics[f"accuracy_raw/eps/{eps}"]) <= 1 / N


def test_pgd_sweep_without_random_start_matches_torchattacks(models):
    torchattacks = pytest.importorskip("torchattacks")
    base, _, data = models
    task = EpsilonSweepTask(attack="pgd", epsilons=("0", "1/255", "4/255"), steps=5, random_start=False,
                            task_name="pgd_sweep_det")
    r = task.evaluate(base, ctx(data))
    x, y = data.images[:N], data.labels[:N]
    for eps, value in (("1/255", 1 / 255), ("4/255", 4 / 255)):
        attack = torchattacks.PGD(base, eps=value, alpha=value / 4, steps=5, random_start=False)
        theirs = torch.cat([attack(x[i:i + 16], y[i:i + 16]) for i in (0, 16)])
        with torch.no_grad():
            pred = base(theirs).argmax(1).numpy()
        assert (pred != r.samples[f"{eps}.pred"]).sum() <= 1, eps  # same tolerance as FGSM; observed: 0


class _Flag(nn.Module):
    """Predicts the label stored in pixel (0, 0, 1) unless pixel (0, 0, 0) is set: then class 0."""

    def forward(self, x):
        label = (x[:, 0, 0, 1] * 10).round().long().clamp(0, 9)
        pred = torch.where(x[:, 0, 0, 0] > 0.5, torch.zeros_like(label), label)
        return F.one_hot(pred, 10).float() * 5


class _NonMonotone(EpsilonSweepTask):
    """An 'attack' that fools the model at 1/255 only: the raw curve goes down, then up again."""

    def perturb(self, model, ctx, eps):
        def attack(x, y, batch):
            x = x.clone()
            if eps == "1/255":
                x[:, 0, 0, 0] = 1.0
            return x
        return attack


def test_non_monotone_raw_curve_is_noted_and_the_worst_case_reported():
    labels = torch.tensor([3, 4, 5, 6])
    images = torch.zeros(4, 3, 32, 32)
    images[:, 0, 0, 1] = labels / 10
    data = TensorDataset("toy", images, labels, 10)
    task = _NonMonotone(attack="pgd", epsilons=("0", "1/255", "2/255"), task_name="toy")
    r = task.evaluate(_Flag(), TaskContext(data, RunSettings(batch_size=2)))
    assert r.metrics["accuracy_raw/eps/2/255"] == 1.0 and r.metrics["accuracy/eps/2/255"] == 0.0
    assert r.metrics["nonmonotone"] == 4 and any("not monotone" in n for n in r.notes)


def test_sweep_resumes_from_stored_eps_parts(models):
    base, _, data = models
    task = EpsilonSweepTask(attack="fgsm", epsilons=("0", "2/255"), steps=1, rel_step=1.0, random_start=False,
                            headline_eps="2/255", task_name="fgsm2")
    parts = {}
    first = task.evaluate(base, ctx(data, limit=8, load_part=parts.get, save_part=parts.__setitem__))
    assert sorted(parts) == ["eps=0", "eps=2/255"]
    parts["eps=2/255"] = {**parts["eps=2/255"], "correct": np.zeros(8, bool)}
    resumed = task.evaluate(base, ctx(data, limit=8, load_part=parts.get, save_part=parts.__setitem__))
    assert resumed.metrics["accuracy/eps/2/255"] == 0.0 <= first.metrics["accuracy/eps/2/255"]


# ----------------------------------------------------------------------------- gradient masking


def _run_cell(task, model, data, tmp_path, partner=None):
    """One cell through the runner's own error handling and store, as `cbbench run` does it."""
    from cbbench.runner import _evaluate
    from cbbench.store import Store

    store = Store(tmp_path / "store")
    ident = dict(key="cell", model="m", model_spec={}, weights_digest="0", task=task.name,
                 task_version=task.version, task_params=task.params(), dataset=data.name, limit=8, seed=0)
    args = dict(store=store, ident=ident, task=task, model=model, partner=partner, dataset=data,
                settings=RunSettings(limit=8, batch_size=8), run_provenance={}, progress=None)
    params = inspect.signature(_evaluate).parameters  # the runner is private API: pass what it takes
    try:
        outcome = _evaluate(**{k: v for k, v in args.items() if k in params})
        return outcome, store.get("cell")
    finally:
        store.close()


@pytest.mark.parametrize("name", ["pgd_sweep", "fgsm_sweep", "autoattack_apgd"])
def test_gradient_masking_fails_the_cell_instead_of_reporting_robustness(models, tmp_path, name):
    base, _, data = models
    outcome, cell = _run_cell(TASKS.get(name), Rounded(base).eval(), data, tmp_path)
    assert outcome.status == "failed" and outcome.reason.startswith("GradientMaskingError")
    assert cell.status == "failed" and "zero" in cell.reason and cell.metrics == {}


def test_transfer_from_a_masked_source_fails_but_a_masked_target_gets_a_number(models, tmp_path):
    base, twin, data = models
    task = TASKS.get("transfer_pgd")
    outcome, _ = _run_cell(task, twin, data, tmp_path, partner=Rounded(base).eval())
    assert outcome.status == "failed" and outcome.reason.startswith("GradientMaskingError")
    result = task.evaluate(Rounded(twin).eval(), ctx(data, limit=8, partner=base))
    assert result.metrics["accuracy"] <= 1


# ----------------------------------------------------------------------------- transfer


def test_transfer_from_the_model_itself_is_white_box_pgd(models):
    base, _, data = models
    transfer = TASKS.get("transfer_pgd").evaluate(base, ctx(data, partner=base))
    white = TASKS.get("pgd_strong").evaluate(base, ctx(data))
    for key in ("correct", "pred", "clean_correct"):
        np.testing.assert_array_equal(transfer.samples[key], white.samples[key])
    assert transfer.metrics["accuracy"] == white.metrics["accuracy"]


def test_transfer_from_the_twin_is_weaker_than_white_box(models):
    base, twin, data = models
    task = TASKS.get("transfer_pgd")
    assert task.uses_partner and task.params()["eps"] == "4/255"
    transfer = task.evaluate(base, ctx(data, partner=twin))
    white = TASKS.get("pgd_strong").evaluate(base, ctx(data))
    m = transfer.metrics
    assert m["clean_accuracy"] == white.metrics["clean_accuracy"]
    assert set(m) >= {"accuracy", "clean_accuracy", "attack_success_rate", "nonfinite"}
    assert transfer.samples["correct"].shape == transfer.samples["clean_correct"].shape == (N,)
    # Observed on this seed: transfer 50-60%, white-box ~25-30% of 32 images.
    assert m["accuracy"] >= white.metrics["accuracy"]


def test_transfer_without_a_pair_is_a_clear_failure(models, tmp_path):
    base, _, data = models
    outcome, cell = _run_cell(TASKS.get("transfer_pgd"), base, data, tmp_path, partner=None)
    assert outcome.status == "skipped" and "no baseline/CB pair" in outcome.reason
    assert cell.status == "skipped" and not cell.reason.startswith("ValueError")


# ----------------------------------------------------------------------------- AutoAttack


def test_autoattack_apgd_runs_stays_below_clean_and_resumes_from_parts(models, monkeypatch):
    base, _, data = models
    task = AutoAttackTask(variant="apgd", eps="4/255", n=8, task_name="aa_test")
    calls = []
    real = aa_adapter.autoattack

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(aa_adapter, "autoattack", counted)
    parts = {}
    # limit 100 > n: the task evaluates the first n=8 images only
    c = ctx(data, limit=100, batch_size=4, load_part=parts.get, save_part=parts.__setitem__)
    state = torch.get_rng_state()
    first = task.evaluate(base, c)
    assert torch.equal(torch.get_rng_state(), state), "pyautoattack's reseeding leaked into the global RNG"
    assert len(calls) == 2 and sorted(parts) == ["batch0[0:4]", "batch1[4:8]"]
    m, s = first.metrics, first.samples
    assert m["num_images"] == 8 and s["correct"].shape == (8,)
    assert m["accuracy"] <= m["clean_accuracy"] and not (s["correct"] & ~s["clean_correct"]).any()
    np.testing.assert_array_equal(s["autoattack_pred"], s["pred"])  # AutoAttack's verdict == re-evaluation
    assert m["accuracy"] < m["clean_accuracy"], "APGD at 4/255 should fool some of the 8 images"
    # Interrupted after batch 0: the resumed cell attacks batch 1 only, and gets the same answer.
    stored = {k: unpack(pack(v)) for k, v in parts.items()}  # through the store's own serialization
    parts.clear()
    parts["batch0[0:4]"] = stored["batch0[0:4]"]
    calls.clear()
    resumed = task.evaluate(base, c)
    assert len(calls) == 1 and sorted(parts) == sorted(stored)
    np.testing.assert_array_equal(resumed.samples["correct"], s["correct"])
    np.testing.assert_array_equal(resumed.samples["pred"], s["pred"])
    # Fully stored: nothing is recomputed.
    calls.clear()
    again = task.evaluate(base, c)
    assert calls == [] and again.metrics == first.metrics


def test_autoattack_adapter_bad_input(models):
    base, _, data = models
    x, y = data.images[:4], data.labels[:4]
    with pytest.raises(ValueError, match="unknown norm 'L3'"):
        aa_adapter.autoattack(base, x, y, "8/255", norm="L3")
    with pytest.raises(ValueError, match="did you mean 8/255"):
        aa_adapter.autoattack(base, x, y, 8)
    with pytest.raises(ValueError, match="eps > 0"):
        aa_adapter.autoattack(base, x, y, 0)
    with pytest.raises(ValueError, match="unknown AutoAttack variant"):
        aa_adapter.autoattack(base, x, y, "8/255", variant="plus")
    for masked in (Detached(base), Rounded(base)):
        with pytest.raises(GradientMaskingError):
            aa_adapter.autoattack(masked.eval(), x, y, "8/255", variant="apgd")
    with pytest.raises(ValueError, match="probabilities"):
        aa_adapter.autoattack(Softmaxed(base).eval(), x, y, "8/255", variant="apgd")
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        aa_adapter.autoattack(copy.deepcopy(base).train(), x, y, "8/255", variant="apgd")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        aa_adapter.autoattack(base, x * 255, y, "8/255", variant="apgd")


def test_bad_task_parameters_are_refused_at_registration():
    with pytest.raises(ValueError, match="unknown norm 'L3'"):
        AutoAttackTask(norm="L3")
    with pytest.raises(ValueError, match="did you mean 8/255"):
        AutoAttackTask(eps="8")
    with pytest.raises(ValueError, match="n .* must be an int >= 1"):
        AutoAttackTask(n=0)
    assert AutoAttackTask(norm="L2", eps="0.5").eps == "0.5"  # L2 radii are not capped at 1
    with pytest.raises(ValueError, match="did you mean 2/255"):
        EpsilonSweepTask(attack="pgd", epsilons=("0", "2"))
    with pytest.raises(ValueError, match="strictly increasing"):
        EpsilonSweepTask(attack="pgd", epsilons=("0", "4/255", "1/255"))
    with pytest.raises(ValueError, match="headline_eps"):
        EpsilonSweepTask(attack="pgd", epsilons=("0", "4/255"))
    with pytest.raises(ValueError, match="unknown attack"):
        EpsilonSweepTask(attack="cw")
    with pytest.raises(ValueError, match="did you mean 4/255"):
        TransferAttackTask(eps=4)


def test_registered_tasks_and_their_report_fields():
    for name in ("pgd_sweep", "fgsm_sweep", "transfer_pgd", "autoattack", "autoattack_apgd",
                 "autoattack_imagenet"):
        task = TASKS.get(name)
        assert task.name == name and "attack" in task.params() and task.headline.key == "accuracy"
        assert getattr(task, "uses_partner", False) == (name == "transfer_pgd")
    assert TASKS.get("autoattack_imagenet").params()["eps"] == "4/255"
    assert TASKS.get("autoattack").params()["eps"] == "8/255"
    assert "NOT standard" in TASKS.get("autoattack_apgd").protocol


def test_batch_seed_is_the_formula_stores_were_made_with():
    """PGD starts, sweeps, AutoAttack and the torch engine: one formula; changing it changes numbers."""
    idx = torch.arange(16, 32)
    assert batch_seed(3, idx[0]) == int(np.random.SeedSequence([3, 16]).generate_state(1)[0])

