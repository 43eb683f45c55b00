"""Shared fixtures: tiny seeded ViTs, isolated paths, and the real sample images when present."""
from __future__ import annotations

import os
from pathlib import Path

# Before anything imports huggingface_hub (it reads this once): tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenet-sample"


@pytest.fixture(autouse=True)
def _isolated_paths(monkeypatch, tmp_path):
    """No test reads or writes the user's results; the hub is never contacted."""
    monkeypatch.setenv("CBBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("CBBENCH_DATA", raising=False)


@pytest.fixture(scope="session")
def demo_checkpoints(tmp_path_factory) -> Path:
    """One checkpoint cache per test session: the demo models train once (about a minute)."""
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def random_checkpoints(tmp_path_factory) -> Path:
    """demo_vit and demo_vit_cb with random weights where training would put them: runs that need a model but
    not a trained one take seconds, not minutes."""
    from cbbench.models.build import build_network
    from cbbench.models.zoo import resolve
    from cbbench.train import checkpoint_path

    root = tmp_path_factory.mktemp("random-checkpoints")
    for name in ("demo_vit", "demo_vit_cb"):
        spec = resolve(name)
        torch.save(build_network(spec).state_dict(), checkpoint_path(spec, root))
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is faster than two (no spin-waiting), and
    what these tests check does not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the command line run in this process."""
    from cbbench.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse rejects a bad value with exit 2
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_vit(cb: bool = False, seed: int = 0, depth: int = 2, **kw) -> torch.nn.Module:
    import timm

    from cbbench.cb import add_context_broadcasting

    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=4, num_classes=10)
    args.update(kw)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()
    return add_context_broadcasting(net) if cb else net


@pytest.fixture
def sample_images() -> Path:
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"real ImageNet sample images not found at {SHARED_SAMPLE} (only in the dev workspace)")
    return SHARED_SAMPLE


def task_context(dataset, *, load_part=None, save_part=None, load_parts=None, stream_every_s=None, **kw):
    """A TaskContext from flat keywords: RunSettings' fields go to the settings, part callables to the store."""
    import dataclasses

    from cbbench.tasks.context import CellStore, RunSettings, TaskContext

    class CallableCellStore(CellStore):
        """A cell store made of plain callables (e.g. a dict's get/__setitem__), for tests that watch parts."""

        def get(self, name):
            return load_part(name) if load_part else None

        def put(self, name, arrays):
            if save_part:
                save_part(name, arrays)

        def get_all(self, prefix):
            return load_parts(prefix) if load_parts else []

    fields = {f.name for f in dataclasses.fields(RunSettings)}
    settings = RunSettings(**{k: kw.pop(k) for k in list(kw) if k in fields})
    store = CallableCellStore()  # without callables it keeps nothing, as CellStore() does
    store.stream_every_s = stream_every_s
    return TaskContext(dataset, settings, store, **kw)
