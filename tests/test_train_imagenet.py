"""ImageNet pair training (`cbbench train --recipe`): lockstep arms, exact resume after kill -9, 2 ranks = 1
process, the pair evaluated by `cbbench run`, and one clear error per bad input.

A tiny ViT (2 blocks, dim 32, 32x32 input, 1000 classes) on the 1000 real sample images (train and held-out:
a pipeline check, not a measurement), one thread everywhere: the runs compared here must be bit-comparable.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cbbench.cli import main
from cbbench.training.loop import Runtime, train_pair
from cbbench.train import one_thread as cpu_one_thread
from cbbench.training.recipe import FIELDS, RECIPES
from tests.conftest import SHARED_SAMPLE

ARCH = "vit_tiny_patch16_224"
TINY_NET = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
# smoke (2 epochs, global batch 16 = 2 micro-batches of 8) made tiny; EMA on, so its state is resumed too
TINY = {"model_kwargs": TINY_NET, "steps_per_epoch": 10, "eval_images": 50, "model_ema": True}
SET_ARGS = ["--set", *(f"{k}={json.dumps(v)}" for k, v in TINY.items())]
FILES = ("baseline.pth", "cb.pth", "baseline_ema.pth", "cb_ema.pth")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """<root>/imagenet/train and .../val: both the 1000 sample images (one per class)."""
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"real ImageNet sample images not found at {SHARED_SAMPLE} (only in the dev workspace)")
    root = tmp_path_factory.mktemp("data")
    (root / "imagenet").mkdir()
    for split in ("train", "val"):
        (root / "imagenet" / split).symlink_to(SHARED_SAMPLE, target_is_directory=True)
    return root


def one_thread():
    """The subprocesses run with OMP_NUM_THREADS=1; an in-process reference must use the same kernels."""
    return cpu_one_thread(torch.device("cpu"))


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The uninterrupted run, in-process without DataLoader workers, with its per-micro-batch trace."""
    out = tmp_path_factory.mktemp("reference")
    trace: list[dict] = []
    with one_thread():
        card = train_pair("smoke", ARCH, data_root, out, Runtime(torch.device("cpu"), workers=0, progress=False),
                          sets=TINY, trace=trace.append)
    return out, card, trace


def cli_train(data_root, out, *extra, prefix=()) -> list[str]:
    return [sys.executable, *prefix, "-m", "cbbench", "train", "--recipe", "smoke", "--arch", ARCH,
            "--data-root", str(data_root), "--out", str(out), "--device", "cpu", *SET_ARGS, *extra]


def weights(out: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(out / name, map_location="cpu", weights_only=True)


def history(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads((out / "log.json").read_text())]


def test_both_arms_see_the_same_batches_and_the_files_load_into_timm(reference):
    import timm

    from cbbench.cb import add_context_broadcasting

    out, card, trace = reference
    by_arm = {arm: [{k: v for k, v in t.items() if k != "arm"} for t in trace if t["arm"] == arm]
              for arm in ("baseline", "cb")}
    assert len(by_arm["baseline"]) == 2 * 10 * 2, "2 epochs x 10 steps x 2 micro-batches of 8"
    assert by_arm["baseline"] == by_arm["cb"], "each arm must get the very same images, augmentations and mixup"
    epoch0 = [i for t in by_arm["baseline"] if t["epoch"] == 0 for i in t["indices"]]
    epoch1 = [i for t in by_arm["baseline"] if t["epoch"] == 1 for i in t["indices"]]
    assert len(epoch0) == 160 and len(set(epoch0)) < 160, "repeated augmentation: images recur within an epoch"
    assert epoch0 != epoch1, "a new order every epoch"
    assert len({t["x"] for t in by_arm["baseline"]}) == 40, "every micro-batch is a different tensor"

    base, cb = weights(out, "baseline.pth"), weights(out, "cb.pth")
    net = timm.create_model(ARCH, **TINY_NET)
    net.load_state_dict(base)
    twin = add_context_broadcasting(timm.create_model(ARCH, **TINY_NET))
    twin.load_state_dict(cb)
    assert base.keys() == cb.keys() and any(not torch.equal(base[k], cb[k]) for k in base), "CB changes training"

    saved = json.loads((out / "card.json").read_text())
    assert saved == json.loads(json.dumps(card))
    from cbbench.training.card import sha256

    assert saved["files"] == {name: sha256(out / name) for name in FILES}
    assert set(saved["config"]["recipe"]) == FIELDS and saved["config"]["recipe"]["model_kwargs"] == TINY_NET
    assert saved["epochs_done"] == 2 and saved["optimizer_steps"] == 20 and saved["config"]["seed"] == 0
    assert saved["config"]["train"]["images"] == 1000 and saved["config"]["held_out"]["images"] == 50
    for row in saved["history"]:
        for key in ("baseline_loss", "cb_loss", "baseline_top1", "cb_top1", "baseline_ema_top1", "cb_ema_top1"):
            assert isinstance(row[key], float), key
    assert saved["versions"]["timm"] and saved["runtime"]["device"].startswith("cpu")
    md = (out / "card.md").read_text()
    assert "| 2 | 160 |" in md and f"timm:{ARCH}+cb@{out.resolve()}/cb.pth" in md
    assert (out / "log.csv").read_text().count("\n") == 3


def test_both_arms_start_from_the_same_weights(reference):
    """--init loads a baseline unchanged into both arms (CB adds no parameters)."""
    from cbbench.cb import has_context_broadcasting
    from cbbench.training.start import cb_twin, starting_network

    out = reference[0]
    net, how = starting_network(ARCH, {**TINY_NET, "drop_path_rate": 0.1}, 0, False, out / "baseline.pth",
                                "cb_finetune", "pretrained")
    twin = cb_twin(net, ARCH)
    saved = weights(out, "baseline.pth")
    assert how["kind"] == "init" and has_context_broadcasting(twin) and not has_context_broadcasting(net)
    for key, value in saved.items():
        assert torch.equal(net.state_dict()[key], value) and torch.equal(twin.state_dict()[key], value), key


def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_weights(data_root, reference, tmp_path):
    out = tmp_path / "pair"
    proc = subprocess.Popen(cli_train(data_root, out, "--save-every", "2", "--workers", "1"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state_file, seen = out / "train_state.pth", None
    deadline = time.monotonic() + 120
    try:
        while True:  # kill as soon as epoch 2 has a mid-epoch checkpoint
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no mid-epoch checkpoint in epoch 2 after 120 s"
            if state_file.exists() and state_file.stat().st_mtime_ns != seen:
                seen = state_file.stat().st_mtime_ns
                state = torch.load(state_file, weights_only=True)
                if state["epoch"] == 1 and state["step"] > 0:
                    proc.kill()  # SIGKILL
                    break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.communicate()
    state = torch.load(state_file, weights_only=True)
    assert state["epoch"] == 1 and 0 < state["step"] < 10, "killed mid-epoch, after a mid-epoch checkpoint"
    assert not (out / "baseline.pth").exists()
    resumed = subprocess.run(cli_train(data_root, out, "--resume", "--workers", "1"), env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at epoch 2, step {state['step'] + 1}/10" in resumed.stderr
    ref = reference[0]
    for name in FILES:
        a, b = weights(out, name), weights(ref, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    assert history(out) == history(ref), "train loss and held-out top-1 of every epoch"


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo is tested on Linux")
def test_two_ranks_match_one_process(data_root, reference, tmp_path):
    """2 gloo ranks x 1 micro-batch per step vs 1 process accumulating 2: the same samples, augmentations, mixup
    and drop-path draws per micro-batch. Gradients meet as (g0 + g1) / 2 either way (halving is exact), so
    the weights agree to far better than 1e-5 (bit for bit on this machine)."""
    out = tmp_path / "ddp"
    run = subprocess.run(cli_train(data_root, out, "--workers", "0",
                                   prefix=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")),
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("trained the") == 1, "only rank 0 reports"
    card = json.loads((out / "card.json").read_text())
    assert card["runtime"]["processes"] == 2 and card["runtime"]["accumulation"] == 1
    ref = reference[0]
    for name in FILES:
        a, b = weights(out, name), weights(ref, name)
        for key in b:
            rel = ((a[key] - b[key]).abs().max() / b[key].abs().max().clamp_min(1e-12)).item()
            assert rel <= 1e-5, f"{name} {key}: relative difference {rel:.2e}"
    for two, one in zip(history(out), history(ref)):
        assert two.keys() == one.keys()
        assert all(two[k] == pytest.approx(one[k], rel=1e-5) for k in one)


def test_train_then_run_evaluates_the_pair(data_root, tmp_path, capsys):
    """The real DeiT-Ti architecture (so `timm:ARCH@file` loads it), 1 step; then `cbbench run` pairs the files,
    and cb.pth copied to <checkpoint dir>/deit_tiny_cb.pth is the zoo's CB twin. (`--suite robustness_imagenet`:
    with --models/--tasks the runner keeps the default digits suite even when a data root is given.)"""
    arch, out = "deit_tiny_patch16_224", tmp_path / "deit"
    with one_thread():
        code = main(["train", "--recipe", "smoke", "--arch", arch, "--data-root", str(data_root), "--out", str(out),
                     "--device", "cpu", "--workers", "0", "--set", "epochs=1", "steps_per_epoch=1", "batch_size=4",
                     "micro_batch=2", "eval_images=4"])
        assert code == 0, capsys.readouterr().err
        code = main(["run", "--suite", "robustness_imagenet", "--models", f"timm:{arch}@{out}/baseline.pth",
                     f"timm:{arch}+cb@{out}/cb.pth", "--tasks", "imagenet_clean", "--data-root", str(data_root), "--limit", "8",
                     "--results", str(tmp_path / "r"), "--batch-size", "8"])
    err = capsys.readouterr().err
    assert code == 0, err
    md = (tmp_path / "r" / "robustness_imagenet.md").read_text()
    assert f"| timm:{arch}@" in md and f"| timm:{arch}+cb@" in md and "| Δ" in md

    from cbbench.models.build import load_model

    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    (checkpoints / "deit_tiny_cb.pth").write_bytes((out / "cb.pth").read_bytes())
    zoo_cb = load_model("deit_tiny_cb", checkpoint_dir=checkpoints)
    assert zoo_cb.weights_digest == load_model(f"timm:{arch}+cb@{out}/cb.pth").weights_digest


def _init_of_another_arch(tmp_path: Path) -> str:
    import timm

    path = tmp_path / "tiny.pth"
    torch.save(timm.create_model(ARCH, **TINY_NET).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("no_train_tree", "ImageNet-1k train not found"),
    ("unknown_arch", "Did you mean deit_tiny_patch16_224"),
    ("unknown_recipe", "unknown recipe 'deitt'. Did you mean 'deit'"),
    ("init_of_another_arch", "does not fit the model architecture"),
    ("unwritable_out", "cannot write to --out"),
    ("finetune_without_weights", "pass --pretrained (timm's weights) or --init"),
    ("bad_set_key", "--set epoch: not a recipe key (did you mean 'epochs'?)"),
    ("not_a_vit", "resnet18 cannot get Context Broadcasting"),
    ("model_names_with_recipe", "drop the model names"),
    ("existing_run", "already holds a training run"),
])
def test_bad_input_gets_one_clear_message(case, message, data_root, reference, tmp_path, capsys):
    args = {"recipe": "smoke", "arch": "deit_tiny_patch16_224", "data-root": str(data_root),
            "out": str(tmp_path / "out")}
    extra: list[str] = []
    if case == "no_train_tree":
        (tmp_path / "empty").mkdir()
        args["data-root"] = str(tmp_path / "empty")
    elif case == "unknown_arch":
        args["arch"] = "deit_tiny_patch16_2244"
    elif case == "unknown_recipe":
        args["recipe"] = "deitt"
    elif case == "init_of_another_arch":
        extra = ["--init", _init_of_another_arch(tmp_path)]
    elif case == "unwritable_out":
        (tmp_path / "file").write_text("not a folder")
        args["out"] = str(tmp_path / "file" / "out")
    elif case == "finetune_without_weights":
        args["recipe"] = "cb_finetune"
    elif case == "bad_set_key":
        extra = ["--set", "epoch=3"]
    elif case == "not_a_vit":
        args["arch"] = "resnet18"
    elif case == "model_names_with_recipe":
        extra = ["demo_vit"]
    elif case == "existing_run":
        args["out"] = str(reference[0])
    code = main(["train", *[a for k, v in args.items() for a in (f"--{k}", v)], *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert err.count("\n") == 1, "exactly one line"
    if case == "no_train_tree":
        assert "datasets/imagenet_train.md" in err
    assert not (tmp_path / "out" / "baseline.pth").exists()


def test_recipes_are_listed_and_hold_their_published_values(capsys):
    assert main(["ls", "recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("deit", "cb_finetune", "smoke", "digits_tiny"))
    deit = RECIPES.get("deit")
    assert (deit.epochs, deit.batch_size, deit.lr, deit.opt, deit.weight_decay, deit.warmup_epochs, deit.sched) == \
        (300, 1024, 1e-3, "adamw", 0.05, 5, "cosine")
    assert (deit.smoothing, deit.mixup, deit.cutmix, deit.aa, deit.reprob, deit.aug_repeats, deit.init) == \
        (0.1, 0.8, 1.0, "rand-m9-mstd0.5-inc1", 0.25, 3, "scratch")
    assert deit.drop_path_for("deit_small_patch16_224") == 0.1
    finetune = RECIPES.get("cb_finetune")
    assert finetune.init == "pretrained" and "not from the CB paper" in finetune.source
    smoke = RECIPES.get("smoke")
    assert smoke.epochs * smoke.steps_per_epoch <= 300


def test_randaugment_posterize_to_zero_bits_is_a_black_image_not_an_error():
    """rand-m9-mstd0.5 draws magnitude 10 now and then, i.e. posterize to 0 bits: Pillow 13 raises, older Pillow
    returned black. (Found by the first full epoch on the sample, which it stopped.)"""
    import timm
    from PIL import Image

    from cbbench.training.data import posterize_zero_bits_black, train_transform

    transform = train_transform(timm.create_model(ARCH, **TINY_NET), RECIPES.get("smoke"))
    ops = [op for step in transform.transforms for op in getattr(step, "ops", []) if "Posterize" in op.name]
    assert ops and all(op.aug_fn is posterize_zero_bits_black for op in ops)
    image = Image.new("RGB", (20, 10), (200, 100, 50))
    assert ops[0].aug_fn(image, 0).getextrema() == ((0, 0),) * 3
    assert ops[0].aug_fn(image, 2).getextrema() == ((192, 192), (64, 64), (0, 0))


def test_datasets_check_counts_the_train_tree(tmp_path, capsys):
    from cbbench.data import classes

    for wnid, n in zip(classes.imagenet_wnids()[:2], (2, 1)):
        (tmp_path / "imagenet" / "train" / wnid).mkdir(parents=True)
        for k in range(n):
            (tmp_path / "imagenet" / "train" / wnid / f"{k}.JPEG").touch()
    assert main(["datasets", "check", "--data-root", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("imagenet_train"))
    assert row.split()[1:5] == ["incomplete", "3", "1281167", "2/1000"]
