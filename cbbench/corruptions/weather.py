"""Weather corruptions: snow, frost, fog, spatter.

* fog: imagecorruptions' diamond-square ``plasma_fractal``, batched (one map per image).
* snow: a zoomed, thresholded Gaussian layer, motion-blurred with the numpy
  re-implementation of ImageMagick's motion blur that imagecorruptions uses.
* frost: blends the frost photographs shipped inside the installed ``imagecorruptions``
  package (its ``frost/`` folder; licence: that of the package, Apache-2.0), resized
  with OpenCV's bicubic exactly as the reference does and cached per image size.
  Like the reference, only frost1..frost5 are drawn (``randint(5)``).
* spatter: severities 4-5 (mud) are pure torch; severities 1-3 (water) need OpenCV's
  Canny, distance transform and histogram equalization, which have no batched torch
  equivalent with the same output, so that mask is computed per image with OpenCV on
  the CPU and the blend is done in torch.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import torch

from cbbench.corruptions.blur import clipped_zoom, gaussian_filter, motion_blur_layer
from cbbench.corruptions.noise import normal, uniform

__all__ = [
    "fog",
    "fog_apply",
    "frost",
    "frost_apply",
    "frost_dir",
    "plasma_fractal",
    "snow",
    "snow_apply",
    "spatter",
    "spatter_apply",
]


# ----------------------------------------------------------------------------- fog
def plasma_fractal(b: int, mapsize: int, wibbledecay: float, draw, dtype=torch.float64, device="cpu"):
    """Batched ``plasma_fractal``; ``draw(shape, low, high)`` returns uniform draws."""
    assert mapsize & (mapsize - 1) == 0
    m = torch.zeros(b, mapsize, mapsize, dtype=dtype, device=device)
    step, wibble = mapsize, 100.0

    def wibbled(a):
        return (a / 4).add_(draw(a.shape, -wibble, wibble).mul_(wibble))  # a / 4 + wibble * draw

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        sq = _plus_rolled(corner, -1, 1)
        sq = _plus_rolled(sq, -1, 2)
        m[:, half::step, half::step] = wibbled(sq)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        lt = _plus_rolled(dr, 1, 1).add_(_plus_rolled(ul, -1, 2))
        m[:, 0::step, half::step] = wibbled(lt)
        tt = _plus_rolled(dr, 1, 2).add_(_plus_rolled(ul, -1, 1))
        m[:, half::step, 0::step] = wibbled(tt)
        step //= 2
        wibble /= wibbledecay
    m = m.sub_(m.amin((1, 2), keepdim=True))
    return m.div_(m.amax((1, 2), keepdim=True))


def _plus_rolled(a: torch.Tensor, shift: int, dim: int) -> torch.Tensor:
    """``a + torch.roll(a, shift, dim)`` for shift = +-1, without materializing the roll."""
    n = a.shape[dim]
    if n == 1:
        return a + a
    out = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    if shift == -1:  # out[i] = a[i] + a[i + 1 mod n]
        torch.add(a.narrow(dim, 0, n - 1), a.narrow(dim, 1, n - 1), out=out.narrow(dim, 0, n - 1))
        torch.add(a.narrow(dim, n - 1, 1), a.narrow(dim, 0, 1), out=out.narrow(dim, n - 1, 1))
    else:  # out[i] = a[i] + a[i - 1 mod n]
        torch.add(a.narrow(dim, 1, n - 1), a.narrow(dim, 0, n - 1), out=out.narrow(dim, 1, n - 1))
        torch.add(a.narrow(dim, 0, 1), a.narrow(dim, n - 1, 1), out=out.narrow(dim, 0, 1))
    return out


def _mapsize(h: int, w: int) -> int:
    n = max(h, w, 3)
    return 1 << (n - 1).bit_length()


def fog_apply(x: torch.Tensor, c, fractal: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    max_val = x.amax((1, 2, 3), keepdim=True)
    y = x + fractal[:, None, :h, :w].to(x.dtype) * c[0]
    return y.mul_(max_val).div_(max_val + c[0]).clamp_(0, 1)


def fog(x: torch.Tensor, c, generator=None) -> torch.Tensor:
    b, _, h, w = x.shape

    def draw(shape, lo, hi):
        return uniform(shape, generator, x.device, torch.float64).mul_(hi - lo).add_(lo)

    return fog_apply(x, c, plasma_fractal(b, _mapsize(h, w), c[1], draw, device=x.device))


# ----------------------------------------------------------------------------- frost
def frost_dir() -> str:
    """The ``frost/`` folder of the installed imagecorruptions package (not imported)."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("frost needs the frost pictures of the PyPI package imagecorruptions")
    return os.path.join(list(spec.submodule_search_locations)[0], "frost")


_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")


@functools.lru_cache(maxsize=16)
def _frost_rescaled(idx: int, h: int, w: int) -> torch.Tensor:
    """Frost picture ``idx`` resized as the reference does for an HxW image, RGB uint8 (3, h', w')."""
    import cv2

    fr = cv2.imread(os.path.join(frost_dir(), _FROST_FILES[idx]))
    fh, fw = fr.shape[:2]
    if fh >= h and fw >= w:
        s = 1
    elif fh < h and fw >= w:
        s = h / fh
    elif fh >= h and fw < w:
        s = w / fw
    else:
        s = np.maximum(h / fh, w / fw)
    s *= 1.1
    fr = cv2.resize(fr, dsize=(int(np.ceil(fw * s)), int(np.ceil(fh * s))), interpolation=cv2.INTER_CUBIC)
    return torch.from_numpy(np.ascontiguousarray(fr[..., [2, 1, 0]].transpose(2, 0, 1)))


def frost_apply(x: torch.Tensor, c, idx, top, left) -> torch.Tensor:
    """Blend frost picture ``idx[i]`` cropped at (top[i], left[i]) into image i."""
    b, _, h, w = x.shape
    crops = []
    for i in range(b):  # one slice per image: the pictures differ in size
        fr = _frost_rescaled(int(idx[i]), h, w)
        crops.append(fr[:, int(top[i]) : int(top[i]) + h, int(left[i]) : int(left[i]) + w])
    f = torch.stack(crops).to(x.device, x.dtype).div_(255)
    return (x * c[0]).add_(f.mul_(c[1])).clamp_(0, 1)  # c0 * x + c1 * f


def frost(x: torch.Tensor, c, generator=None) -> torch.Tensor:
    b, _, h, w = x.shape
    u = uniform((3, b), generator, "cpu", torch.float64).numpy()
    idx = np.minimum((u[0] * 5).astype(np.int64), 4)
    top, left = np.zeros(b, np.int64), np.zeros(b, np.int64)
    for i in range(b):
        fh, fw = _frost_rescaled(int(idx[i]), h, w).shape[1:]
        top[i] = min(int(u[1, i] * (fh - h)), fh - h - 1)  # randint(0, fh - h)
        left[i] = min(int(u[2, i] * (fw - w)), fw - w - 1)
    return frost_apply(x, c, idx, top, left)


# ----------------------------------------------------------------------------- snow
def snow_apply(x: torch.Tensor, c, layer: torch.Tensor, angles) -> torch.Tensor:
    """snow given the raw normal layer (B, H, W) (already ``loc + scale * z``) and angles."""
    h, w = x.shape[-2:]
    s = clipped_zoom(layer[:, None].double(), c[2])
    s = s.masked_fill_(s < c[3], 0).clamp_(0, 1)
    s = motion_blur_layer(s, c[4], c[5], angles)
    s = s.mul_(255).round_().clamp_(0, 255).div_(255)[..., :h, :w].to(x.dtype)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1]).add_(0.114 * x[:, 2])[:, None]
    # y = c6 * x + (1 - c6) * max(x, 1.5 * gray + 0.5)
    y = (x * c[6]).add_(torch.maximum(x, gray.mul_(1.5).add_(0.5)).mul_(1 - c[6]))
    return y.add_(s).add_(torch.flip(s, (-2, -1))).clamp_(0, 1)


def snow(x: torch.Tensor, c, generator=None) -> torch.Tensor:
    b, _, h, w = x.shape
    layer = normal((b, h, w), generator, x.device, torch.float64).mul_(c[1]).add_(c[0])
    angles = uniform((b,), generator, "cpu", torch.float64).numpy() * 90 - 135
    return snow_apply(x, c, layer, angles)


# ----------------------------------------------------------------------------- spatter
def _water_mask(liquid: np.ndarray, c4: float) -> np.ndarray:
    """The reference's OpenCV pipeline for severities 1-3, one (H, W) float64 layer."""
    import cv2

    lu8 = (liquid * 255).astype(np.uint8)
    dist = 255 - cv2.Canny(lu8, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = cv2.filter2D(dist, cv2.CV_8U, ker)
    dist = cv2.blur(dist, (3, 3)).astype(np.float32)
    m = lu8 * dist
    mx = m.max()
    # the reference divides by the max: an empty mask (0/0) means no spatter
    return (m / mx * np.float32(c4)) if mx > 0 else np.zeros_like(m)


def spatter_apply(x: torch.Tensor, c, layer: torch.Tensor) -> torch.Tensor:
    """spatter given the raw normal layer (B, H, W) (already ``loc + scale * z``)."""
    liquid = gaussian_filter(layer[:, None].double(), c[2])[:, 0]
    liquid = liquid.masked_fill(liquid < c[3], 0)
    if c[5] == 0:
        import cv2

        lq = liquid.cpu().numpy()
        # OpenCV's own threads follow torch's (the engine's choice from the load); same output
        before = cv2.getNumThreads()
        cv2.setNumThreads(torch.get_num_threads())
        try:
            m = np.stack([_water_mask(lq[i], c[4]) for i in range(lq.shape[0])])
        finally:
            cv2.setNumThreads(before)
        m = torch.from_numpy(m).to(x.device, x.dtype)[:, None]
        color = torch.tensor([175 / 255, 238 / 255, 238 / 255], device=x.device, dtype=x.dtype)
        return (m * color.view(1, 3, 1, 1)).add_(x).clamp_(0, 1)  # x + m * color
    m = (liquid > c[3]).to(torch.float64)[:, None]
    m = gaussian_filter(m, c[4])
    m = m.masked_fill_(m < 0.8, 0).to(x.dtype)
    color = torch.tensor([63 / 255, 42 / 255, 20 / 255], device=x.device, dtype=x.dtype)
    return (x * (1 - m)).add_(color.view(1, 3, 1, 1) * m).clamp_(0, 1)


def spatter(x: torch.Tensor, c, generator=None) -> torch.Tensor:
    b, _, h, w = x.shape
    layer = normal((b, h, w), generator, x.device, torch.float64).mul_(c[1]).add_(c[0])
    return spatter_apply(x, c, layer)
