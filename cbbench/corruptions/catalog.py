"""The ImageNet-C corruption catalog (Hendrycks & Dietterich, 2019): names, families, severities, engines.

The one place these are written. Torch- and numpy-free, so listing datasets, validating a suite
file or the CLI can use it without loading either. The orders are part of cell keys (tasks store
their corruption lists in their parameters): do not reorder.
"""
from __future__ import annotations

__all__ = ["ALL_CORRUPTIONS", "BENCHMARK_CORRUPTIONS", "ENGINES", "FAMILIES", "HELDOUT_CORRUPTIONS", "REFERENCE_ENGINE",
           "SEVERITIES", "TORCH_ENGINE"]

#: The 15 corruptions averaged in mCE (noise, blur, weather, digital), in the canonical ImageNet-C order.
BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)

#: The 4 held-out (validation) corruptions: they have AlexNet numbers but are excluded from mCE.
HELDOUT_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

#: All 19, benchmark first (imagecorruptions' ``get_corruption_names("all")`` order).
ALL_CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS + HELDOUT_CORRUPTIONS

#: The ImageNet-C families, including the held-out corruptions.
FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "weather": ("snow", "frost", "fog", "spatter", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"),
}

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: The corruption engines (corruptions/apply.py) by the one name they have everywhere: cell keys, suite
#: files, ``cbbench datasets make-c --engine``.
REFERENCE_ENGINE = "imagecorruptions-1.1.2"  # the reference implementation, per image, CPU
TORCH_ENGINE = "cbbench-torch"  # cbbench's batched engine (CPU or GPU)
ENGINES: tuple[str, ...] = (REFERENCE_ENGINE, TORCH_ENGINE)
