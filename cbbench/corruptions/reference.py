"""Reference ImageNet-C corruptions for batches of torch images.

This wraps the PyPI package ``imagecorruptions`` 1.1.2 (the original port of
Hendrycks & Dietterich's ImageNet-C code, https://github.com/bethgelab/imagecorruptions)
without re-implementing any corruption: :func:`reference_corrupt` calls the
package's own functions and only handles conversion, seeding and quantization.

Compatibility shim
------------------
imagecorruptions 1.1.2 was written for numpy 1.x and scikit-image < 0.19. On
numpy 2 / scikit-image 0.26 three things break, and one more changes silently:

* ``gaussian_blur`` and ``glass_blur`` call ``skimage.filters.gaussian(...,
  multichannel=True)``; that keyword was removed in scikit-image 0.19 in favour
  of ``channel_axis=-1`` (same meaning: blur each channel separately) -> TypeError.
* ``fog`` calls ``plasma_fractal``, which allocates ``np.empty(..., dtype=np.float_)``;
  ``np.float_`` (an alias of ``np.float64``) was removed in numpy 2 -> AttributeError.
* ``impulse_noise`` calls ``skimage.util.random_noise(..., mode='s&p')``. Old
  scikit-image drew from numpy's global RNG; since 0.19 it draws from a fresh
  ``np.random.default_rng()`` when no ``rng`` is given, i.e. from OS entropy, so
  the output ignored ``np.random.seed`` and was not reproducible. (No crash.)
* The module imports ``pkg_resources`` (needs setuptools < 81; it warns) and
  ``scipy.ndimage.interpolation`` (deprecated; it warns). Those warnings are
  silenced for that import only.

The fix is applied once, on first use, and only to the names *inside* the
``imagecorruptions.corruptions`` module; numpy, scipy and scikit-image
themselves are not modified:

* the module's global ``gaussian`` becomes a wrapper that translates
  ``multichannel=True/False`` to ``channel_axis=-1/None`` and forwards
  everything else unchanged to ``skimage.filters.gaussian``;
* the module's global ``np`` becomes a proxy module whose only addition is
  ``float_ = numpy.float64``; every other attribute (``np.random`` included, so
  the same global RNG) is looked up on the real numpy;
* the module's global ``sk`` becomes a proxy of scikit-image whose
  ``util.random_noise`` passes ``rng=numpy.random.Generator(
  numpy.random.get_bit_generator())`` when no ``rng`` is given: a Generator over
  the very bit generator behind ``np.random.*``, so the draws come from (and
  advance) the global RNG as they did in old scikit-image; ``Generator.random``
  over that MT19937 yields the same numbers as ``np.random.random``.

The algorithms, constants and quirks of the reference are untouched. In
particular ``glass_blur``'s "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``
works on numpy views and therefore copies instead of swapping; that is what
the published ImageNet-C data was made with, so it is kept.

Semantics of :func:`reference_corrupt`
--------------------------------------
* input: float tensor (B, 3, H, W) in [0, 1], any device; each image becomes
  ``uint8(round(x * 255))`` HxWx3 and is passed to the reference as a PIL image
  (what ``imagecorruptions.corrupt`` does).
* randomness: the reference uses numpy's global RNG. Before image ``i`` of the
  batch, the global RNG is seeded with a 32-bit value derived from
  ``(seed, index_offset + i)`` via ``numpy.random.SeedSequence``; the caller's
  global RNG state is saved before and restored after the batch (also on
  error). The derived seed does not depend on the corruption or severity, so
  for a given seed the severities of a noise corruption share the same random
  draws. A module lock serializes calls from different threads, but other
  threads using ``np.random`` at the same time would still interleave with it.
* output: like the published ImageNet-C images, ``np.uint8(np.clip(out, 0, 255))``
  (truncation, not rounding; PIL outputs of jpeg_compression/pixelate are
  already uint8), then ``/ 255`` back to a tensor with the input's shape, dtype
  and device. The result is detached (no gradient).
* sizes: height and width must be at least 32 (the reference's own
  ``corrupt()`` refuses smaller images). If the reference returns a different
  shape, a ValueError names the corruption, severity and size (see below).

Output shapes (checked for every corruption x severity, several seeds)
----------------------------------------------------------------------
None. With the shim, every corruption at every severity returns an HxWx3
image of the input's size at 32x32 (3 seeds) and 224x224 (glass_blur: all
severities, 1 seed), and also at 16x16, 28x28, 31x31, 33x33, 64x64, 96x96,
100x100, 227x227, 256x256, 299x299 and the non-square 32x48, 48x32, 32x224,
224x32, 375x500 (HxW). Hendrycks' original code had sizes hard-coded for 224
(frost crop, fog map size); this port already sizes them from the input.
The check stays: a shape mismatch raises ValueError naming the corruption,
severity and size rather than being resized silently.

One value problem was found instead: spatter at severities 1-3 divides its
mask by the mask's maximum. When the random liquid layer has no pixel above
threshold (about 2% of 32x32 images at severity 1; none in 300 tries at
severities 2-3 or at 64x64, none in 100 at 224x224), that is 0/0 and the whole
output is NaN, which ``np.uint8`` turns into a black image (on x86). An empty
mask means no spatter, so those pixels get the reference's result for m == 0:
the input itself (its float32 ``x / 255. * 255`` round trip is exact).

Speed (ms per image, 32x32, mean over severities 1-5, 2 CPU cores)
------------------------------------------------------------------
Shared machine (load average about 4.5 from other jobs), batch of 16 colourized
sklearn digits, best of 3 runs per severity, including the tensor conversions:

    gaussian_noise     0.29    shot_noise        0.45    impulse_noise      0.27
    defocus_blur       0.68    glass_blur       27.1     motion_blur        3.4
    zoom_blur          6.1     snow              2.6     frost             15.8
    fog                2.5     brightness        1.6     contrast           0.40
    elastic_transform  1.4     pixelate          0.15    jpeg_compression   0.31
    speckle_noise      0.25    gaussian_blur     0.38    spatter            0.89
    saturate           1.0

frost re-reads and resizes a large frost photo on every call; glass_blur is a
per-pixel Python loop (at 224x224 it takes 2-3.5 s per image). At 224x224 the
others take about 2-400 ms per image, zoom_blur being the slowest.
"""
from __future__ import annotations

import difflib
import importlib.metadata
import math
import threading
import types
import warnings
from typing import Any

import numpy as np
import torch

from cbbench.corruptions.catalog import ALL_CORRUPTIONS, SEVERITIES

__all__ = [
    "REFERENCE_PACKAGE_VERSION",
    "reference_corrupt",
    "reference_module",
]

REFERENCE_PACKAGE_VERSION = "1.1.2"
MIN_SIZE = 32

_LOCK = threading.RLock()
_NUMPY_FLOAT = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
_MODULE: types.ModuleType | None = None
_SHIM_MARK = "_cbbench_compat_shim"


# --------------------------------------------------------------------------
# compatibility shim (see module docstring)
# --------------------------------------------------------------------------
class _NumpyCompat(types.ModuleType):
    """numpy as seen by imagecorruptions: numpy plus the ``float_`` alias."""

    float_ = np.float64

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


class _SkimageUtilCompat(types.ModuleType):
    def __init__(self, util: types.ModuleType):
        super().__init__("skimage.util")
        self._util = util
        random_noise = util.random_noise

        def random_noise_global_rng(image, mode="gaussian", rng=None, **kwargs):
            """skimage.util.random_noise drawing from numpy's global RNG."""
            if rng is None:
                rng = np.random.Generator(np.random.get_bit_generator())
            return random_noise(image, mode=mode, rng=rng, **kwargs)

        self.random_noise = random_noise_global_rng

    def __getattr__(self, name: str) -> Any:
        return getattr(self._util, name)


class _SkimageCompat(types.ModuleType):
    def __init__(self, skimage: types.ModuleType):
        super().__init__("skimage")
        self._skimage = skimage
        self.util = _SkimageUtilCompat(skimage.util)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._skimage, name)


def _make_gaussian_compat(gaussian):
    def gaussian_compat(image, *args, multichannel=None, **kwargs):
        """skimage.filters.gaussian accepting the pre-0.19 ``multichannel``."""
        if multichannel is not None:
            if "channel_axis" in kwargs:
                raise TypeError("pass either multichannel or channel_axis, not both")
            kwargs["channel_axis"] = -1 if multichannel else None
        return gaussian(image, *args, **kwargs)

    gaussian_compat.__wrapped__ = gaussian
    return gaussian_compat


def reference_module() -> types.ModuleType:
    """Return ``imagecorruptions.corruptions`` with the compatibility shim applied."""
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    with _LOCK:
        if _MODULE is not None:
            return _MODULE
        try:
            version = importlib.metadata.version("imagecorruptions")
        except importlib.metadata.PackageNotFoundError as exc:
            raise ImportError(
                "reference ImageNet-C corruptions need the PyPI package "
                f"imagecorruptions=={REFERENCE_PACKAGE_VERSION} (and setuptools<81)"
            ) from exc
        if version != REFERENCE_PACKAGE_VERSION:
            raise ImportError(
                f"cbbench's reference corruptions are written for imagecorruptions=="
                f"{REFERENCE_PACKAGE_VERSION}, found {version}"
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pkg_resources.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            import skimage
            import skimage.filters
            import skimage.util
            from imagecorruptions import corruptions as mod

        if not getattr(mod, _SHIM_MARK, False):
            mod.gaussian = _make_gaussian_compat(skimage.filters.gaussian)
            mod.np = _NumpyCompat("numpy")
            mod.sk = _SkimageCompat(skimage)
            setattr(mod, _SHIM_MARK, True)
        missing = [n for n in ALL_CORRUPTIONS if not callable(getattr(mod, n, None))]
        if missing:
            raise ImportError(f"imagecorruptions.corruptions lacks {missing}")
        _MODULE = mod
        return mod


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def _check_name(name: Any) -> str:
    if isinstance(name, str) and name in ALL_CORRUPTIONS:
        return name
    hint = ""
    if isinstance(name, str):
        close = difflib.get_close_matches(name, ALL_CORRUPTIONS, n=1)
        if close:
            hint = f" Did you mean {close[0]!r}?"
    raise ValueError(
        f"unknown corruption {name!r}.{hint} Valid corruptions: {', '.join(ALL_CORRUPTIONS)}"
    )


def _check_severity(severity: Any) -> int:
    if (
        isinstance(severity, (int, np.integer))
        and not isinstance(severity, (bool, np.bool_))
        and int(severity) in SEVERITIES
    ):
        return int(severity)
    raise ValueError(
        f"severity must be one of {', '.join(map(str, SEVERITIES))} (an int), got {severity!r}"
    )


def _check_nonneg_int(value: Any, what: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 0:
        return int(value)
    raise ValueError(f"{what} must be a non-negative int, got {value!r}")


def check_batch(images: Any, name: str, min_size: int, why: str = "") -> None:
    """Type, shape and size checks shared by this adapter and the torch engine."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(
            "images must be a floating-point torch.Tensor, got "
            f"{getattr(images, 'dtype', type(images).__name__)}"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f"{name}: images must be at least {min_size}x{min_size}{why}, got {h}x{w}")
    if images.numel():
        # one pass: min and max propagate NaN, and an inf is the min or the max
        lo, hi = (float(v) for v in torch.aminmax(images.detach()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("images contain NaN or inf")
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"images must be in [0, 1] (un-normalized, not ImageNet-normalized), "
                             f"got values in [{lo:.4g}, {hi:.4g}]")


def _image_seed(seed: int, index: int) -> int:
    """32-bit seed for numpy's legacy global RNG from (seed, image index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])


def _to_uint8_hwc(out: Any, name: str, severity: int, image: np.ndarray) -> np.ndarray:
    """Quantize a reference output like the published ImageNet-C images."""
    arr = np.asarray(out)
    if arr.shape != image.shape:
        h, w = image.shape[:2]
        raise ValueError(
            f"reference {name} (severity {severity}) returned shape {arr.shape} "
            f"for a {h}x{w} image; {name} is not supported at {h}x{w}"
        )
    if arr.dtype == np.uint8:
        return arr
    arr = np.array(arr, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        if name != "spatter":
            raise FloatingPointError(f"reference {name} returned non-finite values")
        # spatter severities 1-3 normalize the spatter mask by its maximum; when the
        # random liquid layer has no pixel above threshold (about 2% of 32x32
        # images at severity 1) that is 0/0 and the whole output is NaN, which
        # np.uint8 would turn into 0 (black). An empty mask means "no spatter":
        # use the reference's output for m == 0, which is the input itself (its
        # float32 round trip x / 255. * 255 is exact for every uint8 value).
        arr[bad] = image[bad]
    # As the published ImageNet-C images: np.uint8 of the clipped output (truncation).
    return np.clip(arr, 0, 255).astype(np.uint8)


def reference_corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    *,
    index_offset: int = 0,
) -> torch.Tensor:
    """Apply the reference ImageNet-C corruption ``name`` at ``severity`` to a batch.

    Args:
        images: float tensor (B, 3, H, W) with values in [0, 1], on any device;
            H and W must be at least 32.
        name: one of :data:`ALL_CORRUPTIONS`.
        severity: one of :data:`SEVERITIES` (1..5).
        seed: non-negative int; image ``i`` is corrupted with numpy's global RNG
            seeded from ``(seed, index_offset + i)``.
        index_offset: added to the in-batch index for seeding, e.g. the dataset
            index of the batch's first image, so that equal images in different
            batches get different noise. Default 0 (seed from the in-batch index).

    Returns:
        Tensor with the shape, dtype and device of ``images``, values in
        {0, 1/255, ..., 1}. The caller's ``np.random`` state is left unchanged.

    Raises:
        ValueError: unknown name, severity not in 1..5, bad seed, bad shape or
            value range, or the reference returned an image of another shape.
        TypeError: ``images`` is not a floating-point tensor.
    """
    name = _check_name(name)
    severity = _check_severity(severity)
    seed = _check_nonneg_int(seed, "seed")
    index_offset = _check_nonneg_int(index_offset, "index_offset")
    check_batch(images, name, MIN_SIZE, " (the reference requires it)")
    b, _, h, w = images.shape
    if b == 0:
        return images.detach().clone()

    # Conversions are done in numpy: tiny torch CPU ops go through torch's thread
    # pool, which costs milliseconds per op on a busy machine.
    x = images.detach()
    if x.dtype not in _NUMPY_FLOAT:
        x = x.float()  # bfloat16 and other dtypes numpy lacks
    x = x.cpu().numpy().astype(np.float64)
    u8 = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)

    from PIL import Image

    func = getattr(reference_module(), name)
    outs = np.empty((b, h, w, 3), dtype=np.uint8)
    with _LOCK:
        state = np.random.get_state()
        try:
            for i in range(b):
                np.random.seed(_image_seed(seed, index_offset + i))
                image = np.ascontiguousarray(u8[i])
                if name == "spatter":
                    with warnings.catch_warnings():
                        # the 0/0 handled in _to_uint8_hwc
                        warnings.filterwarnings(
                            "ignore", message="invalid value encountered in divide",
                            category=RuntimeWarning,
                        )
                        out = func(Image.fromarray(image), severity)
                else:
                    out = func(Image.fromarray(image), severity)
                outs[i] = _to_uint8_hwc(out, name, severity, image)
        finally:
            np.random.set_state(state)

    chw = outs.transpose(0, 3, 1, 2)
    np_dtype = _NUMPY_FLOAT.get(images.dtype, np.float32)
    res = torch.from_numpy(np.ascontiguousarray(chw, dtype=np_dtype) / np_dtype(255))
    return res.to(device=images.device, dtype=images.dtype)
