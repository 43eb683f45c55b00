"""ImageNet-C generated on the fly from ImageNet val: the same metrics as the precomputed set, no 3.75M files.

The published ImageNet-C was made from Resize(256) + CenterCrop(224) of val
(bilinear), corrupted at 224x224, truncated to uint8 and saved as JPEG (quality
85). Here each val batch goes through those same steps (cbbench/data/make_c.py:
the crop, never the model's own eval transform; a corruption engine; the JPEG
save and reload) and is evaluated without any further resize. The clean error for
relative mCE is measured on val with the model's eval transform, as in the
precomputed task.

Engines: ``cbbench-torch`` (batched, faithful in value or distribution, see
docs/corruption_engine.md) and ``imagecorruptions-1.1.2`` (the reference, one
image at a time; slow at 224). Numbers follow the precomputed set's protocol
but are not bit-identical to it: the random draws differ, and the engines follow
the reference in value or in distribution (docs/corruption_engine.md). The report labels these tasks
"generated"; the precomputed task is ``imagenet_c``.

All cells are made from the same val batches, so they are evaluated in one pass: each batch
is decoded and cropped once for the 75 (or 95) cells, with the numbers of a cell-by-cell loop.
With ``--decode gpu`` the JPEG round trip runs with torchvision on the device
(docs/gpu_pipeline.md); otherwise PIL on the host, the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from cbbench.corruptions.catalog import REFERENCE_ENGINE, TORCH_ENGINE
from cbbench.corruptions.apply import corrupt_batch_cached
from cbbench.data.make_c import imagenet_c_crop, jpeg_roundtrip
from cbbench.tasks.base import Metric, NamedByField, TaskContext, register_task, run_batches
from cbbench.tasks.corruptions import UsesEngine
from cbbench.tasks.imagenet import ImageNetCTask, _slim, resolve_dataset


@dataclass(frozen=True)
class GeneratedImageNetCTask(NamedByField, UsesEngine, ImageNetCTask):
    engine: str = TORCH_ENGINE
    task_name: str = "imagenet_c_generated"

    version = 1

    @property
    def headline(self) -> Metric:
        return Metric("mean_accuracy", f"IN-C generated acc. (mean 15x5, {self.engine})", True)

    @property
    def protocol(self) -> str:
        precomputed = ImageNetCTask.protocol.split(". error/", 1)[1]
        return (f"ImageNet-C GENERATED on the fly from ImageNet val (not the published files): Resize(256, "
                f"bilinear) + CenterCrop(224) as in ImageNet-C's creation, corruption by {self.engine} at 224x224, "
                f"truncated to uint8, saved and reloaded as JPEG quality 85 (as the published files), no further resize; seeds from (run seed, image index). "
                f"error/{precomputed}")

    one_pass = True  # every cell is made from the same val images: each batch is read once for all of them

    def _cells(self, model, ctx: TaskContext):
        val = resolve_dataset(ctx, "imagenet_val")
        sub = replace(ctx, dataset=val, transform=imagenet_c_crop())
        on_device = ctx.run.decode_on_device  # --decode gpu: the JPEG round trip runs with torchvision on the device

        def perturb(c: str, s: int):
            return lambda x, y, batch: jpeg_roundtrip(
                corrupt_batch_cached(val.name, x, batch.index, c, s, ctx.run.seed, self.engine), on_device=on_device)

        def cells(todo):
            descs = {f"{c}/{s}": f"{c} s{s} (generated)" for c, s in todo}
            out = run_batches(model, sub, class_subset=val.class_subset,
                              cells={descs[f"{c}/{s}"]: perturb(c, s) for c, s in todo})
            return {name: _slim(out[desc], val, ctx.run.limit) for name, desc in descs.items()}

        notes = [f"ImageNet-C generated from ImageNet val with {self.engine} (not the published JPEG files)"]
        return cells, list(self.holdout), notes


for _task in (GeneratedImageNetCTask(),
              GeneratedImageNetCTask(engine=REFERENCE_ENGINE, task_name="imagenet_c_reference")):
    register_task(_task)
