"""Digital corruptions: contrast, brightness, saturate, pixelate, JPEG, elastic transform.

brightness and saturate go through HSV exactly as scikit-image's ``rgb2hsv`` /
``hsv2rgb`` do (same tie-breaking of the max channel, same hue wrap-around).
pixelate reproduces Pillow's BOX downscale weights and NEAREST upscale indices;
JPEG round-trips each image through torchvision's libjpeg encoder/decoder at the
reference's quality; elastic_transform reproduces scipy's ``map_coordinates``
(order 1, ``mode='reflect'``) on a displacement field smoothed like the reference.
(ImageNet-C lists brightness under "weather"; it lives here because it shares HSV.)
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from cbbench.corruptions.blur import band_blocks, gaussian_filter, matmul_cols, matmul_rows
from cbbench.corruptions.noise import uniform

__all__ = [
    "brightness",
    "contrast",
    "elastic_transform",
    "elastic_transform_apply",
    "hsv_to_rgb",
    "jpeg_compression",
    "pixelate",
    "rgb_to_hsv",
    "saturate",
]


# ----------------------------------------------------------------------------- HSV
def _hsv_planes(x: torch.Tensor):
    """skimage ``rgb2hsv`` as three (B, H, W) planes."""
    r, g, b = x.unbind(1)
    mn, v = torch.aminmax(x, dim=1)
    delta = v - mn
    zero = delta == 0
    safe = delta.masked_fill(zero, 1)
    s = (delta / v.masked_fill(v == 0, 1)).masked_fill_(zero, 0)
    h = (g - b).div_(safe)
    h = torch.where(g == v, (b - r).div_(safe).add_(2.0), h)  # later cases win, as in skimage
    h = torch.where(b == v, (r - g).div_(safe).add_(4.0), h)
    h = torch.remainder(h.div_(6.0), 1.0).masked_fill_(zero, 0)
    return h, s, v


# output channel -> which of (v, q, p, t) it takes for each hue sector hi = 0..5, and 6 (= 0)
_SECTORS = ((0, 1, 2, 2, 3, 0, 0), (3, 0, 0, 1, 2, 2, 3), (2, 2, 3, 0, 0, 1, 2))


def _rgb_from_hsv(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor, wrap: bool = True) -> torch.Tensor:
    """skimage ``hsv2rgb`` of three (B, H, W) planes, as (B, 3, H, W). ``wrap=False``: h is known
    to be in [0, 1] (as ``_hsv_planes`` makes it), so the sector ``floor(6 h)`` is in 0..6."""
    h6 = h * 6
    hi = torch.floor(h6)
    f = h6.sub_(hi)
    cand = torch.empty((h.shape[0], 4, *h.shape[1:]), dtype=h.dtype, device=h.device)
    cand[:, 0] = v
    torch.mul(v, (1 - s), out=cand[:, 2])  # p
    torch.mul(v, (1 - f * s), out=cand[:, 1])  # q
    # t = v * (1 - (1 - f) * s); -a + 1 is 1 - a exactly
    torch.mul(v, f.neg_().add_(1).mul_(s).neg_().add_(1), out=cand[:, 3])
    sector = hi.long()
    if wrap:
        sector.remainder_(6)
    sector = sector.view(-1)
    table = torch.tensor(_SECTORS, device=h.device)  # (3, 7)
    idx = torch.empty((3, *h.shape), dtype=torch.long, device=h.device)
    for c in range(3):
        torch.index_select(table[c], 0, sector, out=idx[c].view(-1))
    return cand.gather(1, idx.permute(1, 0, 2, 3))


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    return torch.stack(_hsv_planes(x), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    return _rgb_from_hsv(*hsv.unbind(1))


def brightness(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    h, s, v = _hsv_planes(x)
    return _rgb_from_hsv(h, s, (v + c).clamp_(0, 1), wrap=False).clamp_(0, 1)


def saturate(x: torch.Tensor, c, generator=None) -> torch.Tensor:
    h, s, v = _hsv_planes(x)
    return _rgb_from_hsv(h, (s * c[0] + c[1]).clamp_(0, 1), v, wrap=False).clamp_(0, 1)


def contrast(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means).mul_(c).add_(means).clamp_(0, 1)


# ----------------------------------------------------------------------------- pixelate
@functools.lru_cache(maxsize=64)
def _box_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's BOX resampling weights (ImagingResample precompute_coeffs), (n_out, n_in)."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 0.5 * fscale
    m = np.zeros((n_out, n_in))
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        for xi in range(xmin, xmax):
            t = (xi - center + 0.5) / fscale
            m[xx, xi] = 1.0 if -0.5 < t <= 0.5 else 0.0
        m[xx] /= m[xx].sum()
    return m


@functools.lru_cache(maxsize=64)
def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's NEAREST resize source indices (ImagingScaleAffine's accumulated coords)."""
    a = n_in / n_out
    xo = a * 0.5
    out = np.empty(n_out, dtype=np.int64)
    for i in range(n_out):
        out[i] = -1 if xo < 0 else int(xo)
        xo += a
    return out


@functools.lru_cache(maxsize=64)
def _box_blocks(n_in: int, n_out: int) -> tuple:
    m = _box_matrix(n_in, n_out)
    return torch.from_numpy(m), band_blocks(m)


def pixelate(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    """PIL ``resize((int(W*c), int(H*c)), BOX)`` then ``resize((W, H), NEAREST)``.

    Like the reference (a PIL uint8 image), the input is rounded to uint8 and Pillow's
    rounding after each of its two BOX passes (horizontal, then vertical) is kept, so
    the output is on the uint8 grid."""
    h, w = x.shape[-2:]
    sh, sw = int(h * c), int(w * c)
    mh, bh = _box_blocks(h, sh)
    mw, bw = _box_blocks(w, sw)
    u8 = (x.double() * 255).round_().clamp_(0, 255)
    small = matmul_cols(u8, mw, bw).add_(0.5).floor_().clamp_(0, 255)
    small = matmul_rows(mh, bh, small).add_(0.5).floor_().clamp_(0, 255).div_(255).to(x.dtype)
    ih = torch.from_numpy(_nearest_index(sh, h)).to(x.device)
    iw = torch.from_numpy(_nearest_index(sw, w)).to(x.device)
    # nearest upscale: copies only (values in [0, 1] already); columns first, on the smaller image
    return small.index_select(-1, iw).index_select(-2, ih)


# ----------------------------------------------------------------------------- JPEG
def jpeg_compression(x: torch.Tensor, quality: int, generator=None) -> torch.Tensor:
    """Round trip through torchvision's libjpeg (CPU) at ``quality``, as PIL's
    ``save(..., 'JPEG', quality=q)`` in the reference (4:2:0 chroma subsampling)."""
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image IO (still works)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import decode_jpeg, encode_jpeg

    u8 = (x.detach() * 255).round_().clamp_(0, 255).to(torch.uint8).cpu()
    data = encode_jpeg(list(u8), quality=int(quality))
    dec = decode_jpeg(data)
    return torch.stack(dec).to(x.device, x.dtype).div_(255)


# ----------------------------------------------------------------------------- elastic
def _reflect_coord(c: torch.Tensor, n: int) -> torch.Tensor:
    """scipy's 'reflect' (half-sample symmetric) boundary for continuous coordinates (in place on ``c``)."""
    if n == 1:
        return torch.zeros_like(c)
    p = c.add_(0.5).remainder_(2 * n)
    p = torch.where(p >= n, 2 * n - p, p)
    return p.sub_(0.5)


def elastic_transform_apply(x: torch.Tensor, alpha: float, ux: torch.Tensor, uy: torch.Tensor) -> torch.Tensor:
    """elastic_transform given the raw uniform fields ``ux``, ``uy`` (B, H, W), already
    scaled to [-max_d, max_d)."""
    b, ch, h, w = x.shape
    sigma = (h * 0.01, w * 0.01)
    dx = gaussian_filter(ux[:, None].double(), sigma, mode="reflect", truncate=3).mul_(alpha).float()
    dy = gaussian_filter(uy[:, None].double(), sigma, mode="reflect", truncate=3).mul_(alpha).float()
    cdt = torch.float64
    yy = dy[:, 0].to(cdt).add_(torch.arange(h, device=x.device, dtype=cdt)[:, None])
    xx = dx[:, 0].to(cdt).add_(torch.arange(w, device=x.device, dtype=cdt)[None, :])
    yy, xx = _reflect_coord(yy, h), _reflect_coord(xx, w)
    y0, x0 = torch.floor(yy), torch.floor(xx)
    fy, fx = yy.sub_(y0).to(x.dtype)[:, None], xx.sub_(x0).to(x.dtype)[:, None]
    y0, x0 = y0.long(), x0.long()
    y1, x1 = (y0 + 1).clamp_(0, h - 1), (x0 + 1).clamp_(0, w - 1)
    y0, x0 = y0.clamp_(0, h - 1), x0.clamp_(0, w - 1)
    y0.mul_(w)
    y1.mul_(w)
    flat = x.reshape(b, ch, h * w)

    def at(yi, xi):
        return flat.gather(2, (yi + xi).view(b, 1, -1).expand(-1, ch, -1)).view(b, ch, h, w)

    # (at(y0, x0) * (1 - fx) + at(y0, x1) * fx) * (1 - fy) + (at(y1, x0) * (1 - fx) + at(y1, x1) * fx) * fy
    gx, gy = 1 - fx, 1 - fy
    top = at(y0, x0).mul_(gx).add_(at(y0, x1).mul_(fx)).mul_(gy)
    bottom = at(y1, x0).mul_(gx).add_(at(y1, x1).mul_(fx)).mul_(fy)
    return top.add_(bottom).clamp_(0, 1)


def elastic_transform(x: torch.Tensor, alpha: float, generator=None) -> torch.Tensor:
    b, _, h, w = x.shape
    md = h * 0.005  # the reference uses shape[0] for both max_dx and max_dy
    u = uniform((2, b, h, w), generator, x.device, torch.float64).mul_(2 * md).sub_(md)
    return elastic_transform_apply(x, alpha, u[0], u[1])
