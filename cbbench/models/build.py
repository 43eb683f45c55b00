"""Building a model from its spec, with its weights: [0,1] RGB in, logits out, eval mode."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from cbbench.cb import add_context_broadcasting
from cbbench.models.checkpoint import load_state_dict_checked, read_state_dict, weights_digest
from cbbench.models.spec import ModelSpec
from cbbench.models.zoo import resolve

log = logging.getLogger(__name__)


class Normalized(nn.Module):
    """Takes [0,1] RGB and normalizes inside (RobustBench convention), so epsilons are in pixels."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_network(spec: ModelSpec, pretrained: bool = False) -> nn.Module:
    """The bare timm network for ``spec`` (CB and its variant settings applied when asked), seeded by ``spec.seed``.

    CB is added after timm builds (and seeds) the network and draws no random numbers: a CB
    variant's initial weights equal its baseline's (a scaled variant's scales start at ones).
    """
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        try:
            net = timm.create_model(spec.arch, pretrained=pretrained, **dict(spec.arch_kwargs))
        except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
            if "Unknown model" in str(exc):
                raise ValueError(f"model {spec.name}: timm has no architecture {spec.arch!r}") from exc
            # e.g. a suite file's arch_kwargs naming an argument timm does not take, or a negative embed_dim
            raise ValueError(f"model {spec.name}: timm.create_model({spec.arch!r}, **{dict(spec.arch_kwargs)}) "
                             f"failed: {exc}; fix its arch_kwargs") from exc
    if spec.cb:
        try:
            add_context_broadcasting(net, spec.cb_layers, position=spec.cb_position, alpha=spec.cb_alpha,
                                     scaled=spec.cb_scaled)
        except TypeError as exc:  # e.g. cb: true on a CNN from a suite file
            raise ValueError(f"model {spec.name}: {exc}") from exc
    return net


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _timm_pretrained(spec: ModelSpec) -> nn.Module:
    """timm's pretrained weights: from the Hugging Face cache, or the hub when it is reachable. Offline, the
    hub client retries for about a minute before it fails, so an unreachable hub switches it to offline mode
    (cache only) first."""
    import huggingface_hub.constants as hub

    offline = hub.HF_HUB_OFFLINE
    try:
        hub.HF_HUB_OFFLINE = offline or not _hub_reachable()
        return build_network(spec, pretrained=True)
    except (OSError, RuntimeError) as exc:  # hub unreachable, nothing in the cache
        raise FileNotFoundError(
            f"model {spec.name}: timm's pretrained weights for {spec.arch} are not available offline "
            f"({exc.__class__.__name__}). Go online once so the Hugging Face cache holds them, or pass "
            f"a local file: timm:{spec.arch}{'+cb' if spec.cb else ''}@/path/to/checkpoint.pth"
        ) from exc
    finally:
        hub.HF_HUB_OFFLINE = offline


def robustbench_dir(checkpoint_dir: str | Path | None = None) -> Path:
    """Where RobustBench checkpoints are looked for: robustbench's own layout under the checkpoint dir."""
    from cbbench.paths import checkpoint_dir as default_dir

    return Path(checkpoint_dir or default_dir()) / "robustbench"


def _robustbench(spec: ModelSpec, checkpoint_dir: str | Path | None):
    """(network, eval transform) of a RobustBench zoo entry from its local checkpoint; never downloads.

    The network takes [0,1] images and normalizes inside (RobustBench's convention);
    the transform is the entry's own preprocessing (e.g. Res256Crop224).
    """
    from cbbench.compat import robustbench as rbc

    dataset, threat = spec.checkpoint.split("/")
    try:
        rb = rbc.import_robustbench()
    except ImportError as exc:  # a skipped cell with the install command, like a missing file
        raise FileNotFoundError(f"model {spec.name} needs the optional robustbench install: {exc}") from exc
    net = rbc.load_local_model(spec.arch, dataset=dataset, threat_model=threat, model_dir=robustbench_dir(checkpoint_dir))
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    # preprocessing=None: robustbench looks up the entry's own (zoo table, *_3d threat models included)
    return net, rb.data.get_preprocessing(BenchmarkDataset(dataset), ThreatModel(threat), spec.arch, None)


def resolve_checkpoint(spec: ModelSpec, checkpoint_dir: str | Path | None = None) -> Path:
    """A checkpoint path; ``cache:NAME`` means NAME inside the checkpoint dir (CBBENCH_CKPT or the user cache)."""
    from cbbench.paths import checkpoint_dir as default_dir

    if spec.weights == "url":
        return download_checkpoint(spec, Path(checkpoint_dir or default_dir()))
    if spec.checkpoint.startswith("cache:"):
        path = Path(checkpoint_dir or default_dir()) / spec.checkpoint.removeprefix("cache:")
        if not path.is_file():
            raise FileNotFoundError(
                f"model {spec.name} needs its checkpoint at {path} (a plain state_dict of {spec.arch}"
                f"{' with CB' if spec.cb else ''}); put it there, set CBBENCH_CKPT, or pass "
                f"timm:{spec.arch}{'+cb' if spec.cb else ''}@/path/to/checkpoint.pth")
        return path
    return Path(spec.checkpoint)


def download_checkpoint(spec: ModelSpec, directory: Path) -> Path:
    """The URL's file in ``directory`` (downloaded once), verified against the spec's sha256."""
    import hashlib
    import hmac
    from urllib.parse import urlparse

    from cbbench.errors import CheckpointError

    expected = spec.sha256.lower()  # 64 hex digits: the spec checks it when it is made
    path = directory / "downloads" / Path(urlparse(spec.checkpoint).path).name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        try:
            torch.hub.download_url_to_file(spec.checkpoint, str(tmp), progress=False)
        except (OSError, ValueError) as exc:  # URLError is an OSError
            tmp.unlink(missing_ok=True)
            raise FileNotFoundError(
                f"model {spec.name}: cannot download {spec.checkpoint} ({exc.__class__.__name__}: {exc}); "
                f"offline, put the file at {path} yourself") from exc
        tmp.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not hmac.compare_digest(digest, expected):  # the whole digest, in constant time
        raise CheckpointError(f"model {spec.name}: {path} has sha256 {digest}, expected {spec.sha256}; "
                              "delete the file to download it again, or fix the checksum")
    return path


def load_model(name_or_spec: str | ModelSpec, device: str | torch.device = "cpu",
               checkpoint_dir: str | Path | None = None, trained: str | Path | None = None) -> Normalized:
    """Any zoo or ad-hoc model, built, with its weights, in eval mode, normalizing inside.

    Demo and CIFAR models (weights="train") load the checkpoint ``trained`` that cbbench's
    training wrote (cbbench.train.checkpoint_path); this never trains: the runner and
    ``cbbench.load_model`` train missing ones first.
    The returned module carries ``spec``, ``weights_digest`` and ``trained_on`` attributes.
    """
    spec = resolve(name_or_spec)
    if spec.weights == "memory":
        raise ValueError(f"model {spec.name} was built in Python and exists only in that session; pass the module "
                         "itself to cbbench.evaluate(model, ...)")
    eval_transform = trained_on = None
    if spec.weights == "robustbench":
        net, eval_transform = _robustbench(spec, checkpoint_dir)
    elif spec.weights == "timm":
        net = _timm_pretrained(spec)
    else:
        net = build_network(spec)
        if spec.weights in ("file", "url"):
            path = resolve_checkpoint(spec, checkpoint_dir)
            load_state_dict_checked(net, read_state_dict(path), str(path))
        elif spec.weights == "train":
            if trained is None or not Path(trained).is_file():
                where = f" (no checkpoint at {trained})" if trained is not None else ""
                raise FileNotFoundError(
                    f"model {spec.name} is trained by cbbench and is not trained yet{where}: run "
                    f"'cbbench train {spec.name}' or 'cbbench run' (which trains it first), or load it with "
                    "cbbench.load_model, which trains it on first use")
            load_state_dict_checked(net, read_state_dict(trained), str(trained))
            trained_on = torch.load(trained, map_location="cpu", weights_only=True).get("trained_on")
    from cbbench.data.transforms import eval_transform_for

    model = Normalized(net, spec.mean, spec.std).eval().to(device)
    model.eval_transform = eval_transform or eval_transform_for(net)  # for datasets read from image files
    model.spec = spec
    model.weights_digest = weights_digest(net)
    model.trained_on = trained_on  # for models trained by cbbench: device, CPU and kernels (provenance)
    return model
