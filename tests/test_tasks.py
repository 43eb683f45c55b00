"""Tasks and the batch loop on tiny models and real digits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cbbench.data.base import TensorDataset, load_dataset
from cbbench.models.build import Normalized
from cbbench.tasks import TASKS, TaskContext
from cbbench.tasks.attention import record_attention
from cbbench.tasks.base import run_batches
from tests.conftest import tiny_vit


def model(cb=False, seed=0):
    return Normalized(tiny_vit(cb=cb, seed=seed), (0.5,) * 3, (0.5,) * 3).eval()


def ctx(limit=20, **kw):
    return TaskContext(dataset=load_dataset("digits"), limit=limit, batch_size=8, **kw)


class Constant(nn.Module):
    """Predicts class ``k`` for every image; NaN logits for images whose first pixel is bright."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        logits = torch.zeros(len(x), 10)
        logits[:, self.k] = 5.0
        logits[x[:, 0, 0, 0] > 0.5] = float("nan")
        return logits


def test_batch_loop_records_per_sample_outcomes_in_order():
    images = torch.zeros(10, 3, 32, 32)
    images[7, 0, 0, 0] = 1.0
    labels = torch.tensor([3, 1, 3, 3, 0, 3, 3, 3, 2, 3])
    data = TensorDataset("toy", images, labels, 10)
    out = run_batches(Constant(3), TaskContext(dataset=data, batch_size=4))
    assert out["index"].tolist() == list(range(10))
    assert out["correct"].tolist() == [True, False, True, True, False, True, True, False, False, True]
    assert out["finite"].tolist() == [i != 7 for i in range(10)]
    expected_conf = math.exp(5) / (math.exp(5) + 9)
    assert out["confidence"][0] == pytest.approx(expected_conf, rel=1e-6) and out["confidence"][7] == 0


def test_clean_task_reports_non_finite_logits_and_calibration():
    images = torch.zeros(4, 3, 32, 32)
    images[0, 0, 0, 0] = 1.0
    data = TensorDataset("toy", images, torch.tensor([3, 3, 3, 1]), 10)
    result = TASKS.get("clean").evaluate(Constant(3), TaskContext(dataset=data, batch_size=2))
    assert result.metrics["accuracy"] == 0.5 and result.metrics["nonfinite"] == 1
    assert 0 <= result.metrics["ece"] <= 1


def test_limit_and_order_are_deterministic():
    a = run_batches(model(), ctx(limit=13))
    b = run_batches(model(), TaskContext(dataset=load_dataset("digits"), limit=13, batch_size=5))
    assert len(a["index"]) == 13
    for key in ("pred", "correct", "label"):
        np.testing.assert_array_equal(a[key], b[key])


def test_uniform_attention_has_entropy_one_and_cosine_one():
    m = model()
    for blk in m.net.blocks:  # q = k = 0 -> every attention row is uniform
        nn.init.zeros_(blk.attn.qkv.weight)
        nn.init.zeros_(blk.attn.qkv.bias)
    result = TASKS.get("attention_entropy").evaluate(m, ctx(limit=4))
    assert result.metrics["mean_entropy"] == pytest.approx(1.0, abs=1e-6)
    assert result.metrics["mean_cosine_to_uniform"] == pytest.approx(1.0, abs=1e-6)
    assert result.metrics["mean_cls_attention"] == pytest.approx(1 / 17, abs=1e-6)  # 16 patches + class token
    assert result.samples["entropy"].shape == (4, 2, 4)  # images, layers, heads


def test_one_hot_attention_has_entropy_zero():
    m = model()
    for blk in m.net.blocks:  # huge logit on one key: attention is one-hot on the class token
        blk.attn.q_norm = nn.Identity()
        with torch.no_grad():
            blk.attn.qkv.weight.zero_()
            blk.attn.qkv.bias.zero_()
            dim = blk.attn.qkv.weight.shape[1]
            blk.attn.qkv.bias[:dim] = 30.0  # q constant
    # keys are zero except for the class token, whose key is made large through a hooked input
    def make_cls_key_large(module, inputs, output):
        out = output.clone()
        dim = out.shape[-1] // 3
        out[:, 0, dim:2 * dim] = 30.0
        return out
    handles = [blk.attn.qkv.register_forward_hook(make_cls_key_large) for blk in m.net.blocks]
    try:
        result = TASKS.get("attention_entropy").evaluate(m, ctx(limit=2))
    finally:
        for h in handles:
            h.remove()
    assert result.metrics["mean_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert result.metrics["mean_cls_attention"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("cb", [False, True])
def test_measuring_attention_does_not_change_outputs(cb):
    m = model(cb=cb)
    x = torch.rand(3, 3, 32, 32)
    assert all(blk.attn.fused_attn for blk in m.net.blocks)
    with torch.no_grad():
        fused = m(x)
        with record_attention(m) as records:
            unfused = m(x)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    assert len(records) == 1 and records[0].shape == (3, 2, 4, 3)
    assert all(blk.attn.fused_attn for blk in m.net.blocks), "fused path must be restored"


def test_corruption_task_is_reproducible_and_resumes_from_parts():
    task = TASKS.get("corruptions")
    small = type(task)(corruptions=("gaussian_noise", "fog"), severities=(1, 5))
    parts = {}
    c = ctx(limit=10, load_part=parts.get, save_part=parts.__setitem__)
    first = small.evaluate(model(), c)
    assert sorted(parts) == ["fog/1", "fog/5", "gaussian_noise/1", "gaussian_noise/5"]
    assert set(first.metrics) >= {"accuracy/fog/5", "accuracy/fog", "accuracy/severity1", "mean_accuracy"}
    means = [first.metrics[f"accuracy/{n}/{s}"] for n in ("gaussian_noise", "fog") for s in (1, 5)]
    assert first.metrics["mean_accuracy"] == pytest.approx(np.mean(means))
    # A resumed evaluation reuses the stored parts instead of recomputing them.
    parts["fog/5"] = {**parts["fog/5"], "correct": np.ones(10, bool)}
    resumed = small.evaluate(model(), c)
    assert resumed.metrics["accuracy/fog/5"] == 1.0
    # Without stored parts, a second evaluation reproduces the first exactly.
    again = small.evaluate(model(), ctx(limit=10))
    assert again.metrics == first.metrics


def test_attack_tasks_record_clean_and_robust_outcomes():
    m = model()
    for name in ("fgsm", "pgd", "pgd_strong"):
        result = TASKS.get(name).evaluate(m, ctx(limit=16))
        s = result.samples
        assert result.metrics["accuracy"] <= result.metrics["clean_accuracy"]
        assert s["clean_correct"].shape == s["correct"].shape == (16,)
        assert result.metrics["clean_accuracy"] == s["clean_correct"].mean()


def test_attack_at_zero_epsilon_is_clean_accuracy():
    from cbbench.tasks.adversarial import LinfAttackTask

    m = model()
    result = LinfAttackTask(attack="pgd", eps="0", steps=2, step_size="1/255", random_start=True,
                            task_name="pgd0").evaluate(m, ctx(limit=16))
    np.testing.assert_array_equal(result.samples["correct"], result.samples["clean_correct"])


def test_bad_attack_parameters_are_refused():
    from cbbench.tasks.adversarial import LinfAttackTask

    with pytest.raises(ValueError, match="did you mean 8/255"):
        LinfAttackTask(attack="pgd", eps="8")
    with pytest.raises(ValueError, match="unknown attack"):
        LinfAttackTask(attack="cw", eps="1/255")


def test_cost_task_counts_parameters_and_times_the_pair_side_by_side():
    base, cb = model(), model(cb=True)
    cost = type(TASKS.get("cost"))(repeats=5, warmup=1)
    result = cost.evaluate(cb, ctx(limit=16, partner=base))
    assert result.metrics["extra_params"] == 0 and result.metrics["num_params"] == sum(
        p.numel() for p in base.parameters())
    assert result.metrics["images_per_second"] > 0 and 0.2 < result.metrics["throughput_ratio"] < 5
    alone = cost.evaluate(base, ctx(limit=16))
    assert "throughput_ratio" not in alone.metrics and alone.notes
