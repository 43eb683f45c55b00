"""Tasks and the batch loop on tiny models and real digits."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from cbbench.data.base import TensorDataset
from cbbench.data.registry import load_dataset
from cbbench.models.build import Normalized
from cbbench.tasks import TASKS, TaskContext
from cbbench.tasks.attention import record_attention
from cbbench.tasks.context import RunSettings
from cbbench.tasks.base import run_batches
from tests.conftest import task_context, tiny_vit


def model(cb=False, seed=0):
    return Normalized(tiny_vit(cb=cb, seed=seed), (0.5,) * 3, (0.5,) * 3).eval()


def ctx(limit=20, **kw):
    return task_context(load_dataset("digits"), limit=limit, batch_size=8, **kw)


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
    out = run_batches(Constant(3), TaskContext(data, RunSettings(batch_size=4)))
    assert out["index"].tolist() == list(range(10))
    assert out["correct"].tolist() == [True, False, True, True, False, True, True, False, False, True]
    assert out["finite"].tolist() == [i != 7 for i in range(10)]
    expected_conf = math.exp(5) / (math.exp(5) + 9)
    assert out["confidence"][0] == pytest.approx(expected_conf, rel=1e-6) and out["confidence"][7] == 0


def test_clean_task_reports_non_finite_logits_and_calibration():
    images = torch.zeros(4, 3, 32, 32)
    images[0, 0, 0, 0] = 1.0
    data = TensorDataset("toy", images, torch.tensor([3, 3, 3, 1]), 10)
    result = TASKS.get("clean").evaluate(Constant(3), TaskContext(data, RunSettings(batch_size=2)))
    assert result.metrics["accuracy"] == 0.5 and result.metrics["nonfinite"] == 1
    assert 0 <= result.metrics["ece"] <= 1


def test_limit_and_order_are_deterministic():
    a = run_batches(model(), ctx(limit=13))
    b = run_batches(model(), TaskContext(load_dataset("digits"), RunSettings(limit=13, batch_size=5)))
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
    # an attack that cannot reach its ε-ball's edge would be reported under an ε it never attacks at
    with pytest.raises(ValueError, match=r"cannot reach the edge .* at most 2.5/255.* at least eps / steps \(1.6/255"):
        LinfAttackTask(attack="pgd", eps="8/255", steps=5, step_size="0.5/255")
    with pytest.raises(ValueError, match="PGD needs a step_size"):
        LinfAttackTask(attack="pgd", eps="1/255", steps=5)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 'many'"):  # before it is used
        LinfAttackTask(attack="pgd", eps="1/255", steps="many")
    LinfAttackTask(attack="pgd", eps="8/255", steps=5, step_size="1.6/255")  # exactly reaches it
    from cbbench.tasks.transfer_attack import TransferAttackTask

    with pytest.raises(ValueError, match="cannot reach the edge"):
        TransferAttackTask(eps="16/255")  # 10 steps of 1/255


def test_cost_task_counts_parameters_and_times_the_pair_side_by_side():
    base, cb = model(), model(cb=True)
    cost = type(TASKS.get("cost"))(repeats=5, warmup=1)
    result = cost.evaluate(cb, ctx(limit=16, partner=base))
    assert result.metrics["extra_params"] == 0 and result.metrics["num_params"] == sum(
        p.numel() for p in base.parameters())
    # No bound on the ratio itself: on a loaded 2-core machine it swings widely (bench/ measures speed).
    m = result.metrics
    assert m["images_per_second"] > 0 and m["partner_images_per_second"] > 0
    assert m["throughput_ratio"] == pytest.approx(m["images_per_second"] / m["partner_images_per_second"])
    alone = cost.evaluate(base, ctx(limit=16))
    assert "throughput_ratio" not in alone.metrics and alone.notes


# The evaluation pipeline (--amp, --channels-last, --compile) and GPU-path hygiene.

class Probe(nn.Module):
    """Records how each evaluation forward runs: autocast state and input memory format."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x):
        self.calls.append((torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"),
                           x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()))
        return self.net(x)


def test_amp_applies_to_the_evaluation_forward_only_and_attacks_stay_fp32():
    from cbbench.tasks.adversarial import LinfAttackTask
    from cbbench.tasks.context import Pipeline

    m = model()
    probe = Probe(m)
    attack = LinfAttackTask(attack="pgd", eps="4/255", steps=2, step_size="2/255", random_start=True)
    adversarial = {}

    def run(pipeline):
        c = ctx(limit=16, pipeline=pipeline)
        inner = attack.perturb(m, c)
        seen = []

        def perturb(x, y, batch):
            seen.append(torch.is_autocast_enabled("cpu"))
            adversarial.setdefault(pipeline.amp, []).append(inner(x, y, batch))
            return adversarial[pipeline.amp][-1]
        return run_batches(probe, c, perturb), seen

    plain, seen_plain = run(Pipeline())
    bf16, seen_bf16 = run(Pipeline(amp="bf16"))
    assert probe.calls == [(False, False)] * 2 + [(torch.bfloat16, False)] * 2
    assert seen_plain == seen_bf16 == [False, False], "perturbations must run outside autocast"
    for a, b in zip(adversarial["off"], adversarial["bf16"]):
        assert a.dtype == torch.float32 and torch.equal(a, b), "the attack must not depend on --amp"
    assert bf16["confidence"].dtype == np.float32 and (plain["pred"] == bf16["pred"]).mean() > 0.8
    with pytest.raises(ValueError, match="unknown --amp 'fp8'; use one of off, bf16, fp16"):
        Pipeline(amp="fp8")


def test_channels_last_feeds_nhwc_and_keeps_predictions():
    from cbbench.tasks.context import Pipeline

    plain = run_batches(model(), ctx(limit=16))
    m = model().to(memory_format=torch.channels_last)
    probe = Probe(m)
    nhwc = run_batches(probe, ctx(limit=16, pipeline=Pipeline(channels_last=True)))
    assert probe.calls == [(False, True)] * 2
    np.testing.assert_array_equal(nhwc["pred"], plain["pred"])
    np.testing.assert_allclose(nhwc["confidence"], plain["confidence"], rtol=1e-5)


def test_compile_is_used_when_it_works_and_falls_back_to_eager_with_a_note(monkeypatch, caplog):
    from cbbench.tasks.context import Pipeline

    plain = run_batches(model(), ctx(limit=16))
    real_compile, compiled_calls = torch.compile, []

    def eager_backend(module, **kw):  # real dynamo tracing, without the minutes inductor takes on a CPU
        compiled = real_compile(module, backend="eager")
        def call(x):
            compiled_calls.append(len(x))
            return compiled(x)
        return call
    monkeypatch.setattr(torch, "compile", eager_backend)
    c = ctx(limit=16, pipeline=Pipeline(compile=True))
    out = run_batches(model(), c)
    assert compiled_calls == [8, 8] and not c.pipeline_notes
    for key in plain:
        np.testing.assert_allclose(out[key], plain[key], rtol=1e-5, err_msg=key)

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            raise RuntimeError("InductorError: no working C++ compiler (simulated)")
    broken = Broken()
    monkeypatch.setattr(torch, "compile", lambda module, **kw: broken)
    m = model()
    with caplog.at_level("WARNING", logger="cbbench.tasks.base"):
        c = ctx(limit=16, pipeline=Pipeline(compile=True))
        out = run_batches(m, c)
        again = ctx(limit=16, pipeline=Pipeline(compile=True))
        run_batches(m, again)
    assert broken.calls == 1, "after one failure the model runs eagerly without retrying the compile"
    for key in plain:
        np.testing.assert_array_equal(out[key], plain[key], err_msg=key)
    assert "torch.compile failed (RuntimeError: InductorError" in c.pipeline_notes[0]
    assert again.pipeline_notes == c.pipeline_notes, "every cell evaluated eagerly says so"
    assert sum("torch.compile failed" in r.message for r in caplog.records) == 1

    def cannot_compile(module, **kw):
        raise RuntimeError("Dynamo is not supported on this Python (simulated)")
    monkeypatch.setattr(torch, "compile", cannot_compile)
    c = ctx(limit=8, pipeline=Pipeline(compile=True))
    np.testing.assert_array_equal(run_batches(model(), c)["pred"], plain["pred"][:8])
    assert "Dynamo is not supported" in c.pipeline_notes[0]


def test_batches_are_pinned_only_for_cuda(tmp_path):
    from PIL import Image

    from cbbench.data.folders import scan_image_folders
    from cbbench.tasks.base import pin_memory_for

    assert pin_memory_for(torch.device("cuda", 1)) and not pin_memory_for(torch.device("cpu"))
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(tmp_path / c / f"{i}.png")
    ds = scan_image_folders(tmp_path, {"a": 0, "b": 1}, name="toy", num_classes=10)
    asked = []
    original = type(ds).batches

    def recording(self, batch_size, limit=None, transform=None, pin_memory=None, **kw):
        asked.append(pin_memory)
        for x, y, idx in original(self, batch_size, limit, transform, pin_memory=pin_memory, **kw):
            assert not x.is_pinned()
            yield x, y, idx
    ds.batches = recording.__get__(ds)
    out = run_batches(model(), TaskContext(ds, RunSettings(batch_size=4)))
    assert asked == [False] and out["index"].tolist() == list(range(6))


def test_pipeline_options_are_in_the_cell_key_the_provenance_and_the_report(tmp_path):
    from cbbench.cli import build_parser
    from cbbench.models.build import build_network
    from cbbench.models.zoo import resolve
    from cbbench.report import write_reports
    from cbbench.runner import RunConfig, run
    from cbbench.store import Store
    from cbbench.train import checkpoint_path

    args = build_parser().parse_args(["run", "--amp", "bf16", "--channels-last", "--compile"])
    assert (args.amp, args.channels_last, args.compile) == ("bf16", True, True)
    spec = resolve("demo_vit")  # random weights: what is tested does not depend on them
    (tmp_path / "ckpt").mkdir()
    torch.save(build_network(spec).state_dict(), checkpoint_path(spec, tmp_path / "ckpt"))
    base = dict(models=["demo_vit"], tasks=["clean"], limit=8, batch_size=8, results=str(tmp_path / "r"),
                checkpoints=str(tmp_path / "ckpt"))
    assert [o.status for o in run(RunConfig(**base)).outcomes] == ["ok"]
    assert [o.status for o in run(RunConfig(**base, amp="bf16", channels_last=True)).outcomes] == ["ok"]
    assert [o.status for o in run(RunConfig(**base)).outcomes] == ["cached"], "default keys must not change"
    with Store(tmp_path / "r") as store:
        pipelines = sorted((c.provenance["pipeline"]["amp"], c.provenance["pipeline"]["channels_last"])
                           for c in (store.get(k) for (k,) in store.db.execute("SELECT key FROM cells")))
    assert pipelines == [("bf16", True), ("off", False)]
    md = next(p for p in write_reports(tmp_path / "r", ["robustness"], ("md",))).read_text()
    assert "- evaluation forward: amp off, channels-last no, torch.compile no" in md  # the latest run: defaults
    with pytest.raises(ValueError, match="unknown --amp"):
        run(RunConfig(**base, amp="int8"))


def test_tasks_seeded_per_batch_key_their_cells_by_batch_size_and_the_others_do_not(tmp_path):
    """PGD's random start is seeded by each batch's first index, so another --batch-size gives other
    numbers: it must be recomputed, not served from the cache; clean accuracy must not be."""
    from cbbench.models.build import build_network
    from cbbench.models.zoo import resolve
    from cbbench.runner import RunConfig, run
    from cbbench.store import Store
    from cbbench.train import checkpoint_path

    spec = resolve("demo_vit")
    (tmp_path / "ckpt").mkdir()
    torch.save(build_network(spec).state_dict(), checkpoint_path(spec, tmp_path / "ckpt"))
    base = dict(models=["demo_vit"], tasks=["clean", "fgsm", "pgd", "corruptions_torch"], limit=8,
                results=str(tmp_path / "r"), checkpoints=str(tmp_path / "ckpt"))
    assert TASKS.get("pgd").seeded_per_batch and not TASKS.get("fgsm").seeded_per_batch
    assert [o.status for o in run(RunConfig(**base, batch_size=4)).outcomes] == ["ok"] * 4
    second = {o.task: o.status for o in run(RunConfig(**base, batch_size=8)).outcomes}
    assert second == {"clean": "cached", "fgsm": "cached", "pgd": "ok", "corruptions_torch": "ok"}
    assert {o.status for o in run(RunConfig(**base, batch_size=4)).outcomes} == {"cached"}
    with Store(tmp_path / "r") as store:
        sizes = sorted(json.loads(p).get("batch_size") for (p,) in store.db.execute(
            "SELECT task_params FROM cells WHERE task='pgd'"))
    assert sizes == [4, 8]


def test_attention_entropy_of_a_model_without_attention_is_not_applicable():
    """A skipped cell with the reason (a conv net has nothing to measure), not a failed one."""
    from cbbench.errors import CellNotApplicable
    from cbbench.tasks.attention import attention_modules

    with pytest.raises(CellNotApplicable, match="no timm attention modules"):
        attention_modules(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()))


def test_every_dataset_kind_follows_the_one_protocol(tmp_path):
    """In-memory, resized in-memory and file datasets all are EvalDatasets; ``only`` picks batches everywhere."""
    from PIL import Image

    from cbbench.data.base import EvalDataset
    from cbbench.data.downstream import load_downstream
    from cbbench.data.folders import scan_image_folders

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(tmp_path / c / f"{i}.png")
    datasets = [load_dataset("digits"), load_downstream("mnist5k", None, (32, 32)).test,
                scan_image_folders(tmp_path, {"a": 0, "b": 1}, name="toy", num_classes=10)]
    for ds in datasets:
        assert isinstance(ds, EvalDataset), type(ds).__name__
        ds.num_workers = 0
        got = [idx.tolist() for _, _, idx in ds.batches(2, 6, only=[0, 2])]
        assert got == [[0, 1], [4, 5]], ds.name
        assert ds.corrupt_within(6) == [] and isinstance(ds.relpath(0), str)
