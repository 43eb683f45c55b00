"""Blur corruptions and the filtering helpers the other families reuse.

Everything here reproduces the exact numerics of imagecorruptions 1.1.2:
``skimage.filters.gaussian`` (scipy ``gaussian_filter``: radius ``int(truncate*sigma+0.5)``,
``mode='nearest'`` unless told otherwise), OpenCV's ``filter2D`` / ``GaussianBlur``
(border ``REFLECT_101``), scipy's order-1 ``zoom`` as used by ``clipped_zoom``, and the
numpy re-implementation of ImageMagick's motion blur (``_motion_blur``: a sum of
edge-clamped shifts weighted by a one-sided Gaussian). All take (B, C, H, W) tensors.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from cbbench.corruptions.noise import uniform

__all__ = [
    "clipped_zoom",
    "defocus_blur",
    "gaussian_blur",
    "gaussian_filter",
    "glass_blur",
    "glass_blur_apply",
    "motion_blur",
    "motion_blur_apply",
    "motion_blur_layer",
    "pad_index",
    "zoom_blur",
]


# ----------------------------------------------------------------------------- padding
def pad_index(n: int, r: int, mode: str, device) -> torch.Tensor:
    """Source indices for ``n`` samples padded by ``r`` on both sides.

    ``nearest`` (scipy) = replicate; ``reflect`` (scipy) = half-sample symmetric
    (``d c b a | a b c d``); ``reflect101`` (OpenCV default, torch ``reflect``) =
    ``d c b | a b c d``. Works for any ``r`` (periodic extension).
    """
    idx = torch.arange(-r, n + r, device=device)
    if mode == "nearest":
        return idx.clamp(0, n - 1)
    if mode == "reflect":
        m = idx.remainder(2 * n)
        return torch.where(m >= n, 2 * n - 1 - m, m)
    if mode == "reflect101":
        if n == 1:
            return torch.zeros_like(idx)
        m = idx.remainder(2 * n - 2)
        return torch.where(m >= n, 2 * n - 2 - m, m)
    raise ValueError(mode)


@functools.lru_cache(maxsize=128)
def _filter_matrix(n: int, sigma: float, mode: str, truncate: float) -> np.ndarray:
    """scipy ``correlate1d`` with Gaussian weights along an axis of length ``n`` as an
    (n, n) matrix (the border mode folded in); a dense matmul is much faster on CPU
    than a single-channel ``conv2d`` and gives the same sums."""
    w = _gauss_weights(sigma, truncate)
    r = (len(w) - 1) // 2
    src = pad_index(n, r, mode, "cpu").numpy()
    m = np.zeros((n, n))
    for k in range(len(w)):
        np.add.at(m, (np.arange(n), src[k : k + n]), w[k])
    return m


@functools.lru_cache(maxsize=64)
def _gauss_weights(sigma: float, truncate: float) -> np.ndarray:
    r = int(truncate * float(sigma) + 0.5)
    x = np.arange(-r, r + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


def gaussian_filter(x: torch.Tensor, sigma, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """``skimage.filters.gaussian(x, sigma, mode, truncate, channel_axis=channel)``.

    ``sigma`` is a number or a (sigma_h, sigma_w) pair; channels are not mixed.
    """
    sh, sw = (sigma, sigma) if np.isscalar(sigma) else (float(sigma[0]), float(sigma[1]))
    out = x
    h, w = x.shape[-2:]
    if sh > 0:
        out = torch.from_numpy(_filter_matrix(h, float(sh), mode, truncate)).to(x.device, x.dtype) @ out
    if sw > 0:
        out = out @ torch.from_numpy(_filter_matrix(w, float(sw), mode, truncate)).to(x.device, x.dtype).T
    return out


# ----------------------------------------------------------------------------- gaussian
def gaussian_blur(x: torch.Tensor, sigma: float, generator=None) -> torch.Tensor:
    return gaussian_filter(x, sigma).clamp(0, 1)


# ----------------------------------------------------------------------------- defocus
@functools.lru_cache(maxsize=16)
def _disk(radius: int, alias_blur: float) -> np.ndarray:
    """imagecorruptions' ``disk``: aliased disk, then cv2.GaussianBlur (reflect101)."""
    if radius <= 8:
        L, k = np.arange(-8, 8 + 1), 3
    else:
        L, k = np.arange(-radius, radius + 1), 5
    X, Y = np.meshgrid(L, L)
    d = np.array((X**2 + Y**2) <= radius**2, dtype=np.float32)
    d /= np.sum(d)
    # cv2.getGaussianKernel(k, sigma) for sigma > 0, computed in float64 then cast
    t = np.arange(k) - (k - 1) / 2
    g = np.exp(-(t**2) / (2 * alias_blur**2))
    g = (g / g.sum()).astype(np.float32)
    dt = torch.from_numpy(d.astype(np.float64))[None, None]
    n = d.shape[0]
    idx = pad_index(n, k // 2, "reflect101", "cpu")
    dp = dt.index_select(-2, idx).index_select(-1, idx)
    gk = torch.from_numpy(g.astype(np.float64))
    out = F.conv2d(F.conv2d(dp, gk.view(1, 1, -1, 1)), gk.view(1, 1, 1, -1))
    return out[0, 0].numpy().astype(np.float32)


def defocus_blur(x: torch.Tensor, c, generator=None) -> torch.Tensor:
    radius, alias = c
    k = torch.from_numpy(_disk(radius, alias).astype(np.float64)).to(x.device, x.dtype)
    r = k.shape[0] // 2
    b, ch, h, w = x.shape
    xp = x.index_select(-2, pad_index(h, r, "reflect101", x.device))
    xp = xp.index_select(-1, pad_index(w, r, "reflect101", x.device))
    # correlation with a symmetric kernel = convolution; done by FFT (OpenCV's filter2D
    # also switches to a DFT for kernels this large)
    size = (h + 2 * r, w + 2 * r)
    out = torch.fft.irfft2(torch.fft.rfft2(xp) * torch.fft.rfft2(k, s=size), s=size)
    return out[..., 2 * r :, 2 * r :].clamp(0, 1)


# ----------------------------------------------------------------------------- glass
def glass_blur_apply(x: torch.Tensor, c, offsets: list[torch.Tensor]) -> torch.Tensor:
    """glass_blur with given offsets; ``offsets[i]`` is (B, H-2d, W-2d, 2) of (dx, dy).

    Row ``j`` of the offsets belongs to image row ``H-d-j`` and column ``k`` to image
    column ``W-d-k`` (the reference's loop order: h and w descending).

    The reference's "swap" ``x[h,w], x[h',w'] = x[h',w'], x[h,w]`` acts on numpy views,
    so it only copies: ``x[h,w] <- x[h',w']``, reading a value already written in this
    pass when (h', w') came earlier in the loop. Every pixel is written once per pass,
    so the pass is ``out[p] = orig[src(p)]`` if src(p) is not yet visited, else
    ``out[src(p)]``: a pointer chain, resolved here by pointer doubling (O(log n)
    vectorized gathers), which reproduces the sequential loop exactly.
    """
    sigma, d, iters = c
    b, ch, h, w = x.shape
    # np.uint8(gaussian(x) * 255): truncation; in float64 like the reference
    y = torch.floor(gaussian_filter(x.double(), sigma) * 255).clamp(0, 255)
    n = h * w
    hh = torch.arange(h - d, d, -1, device=x.device)
    ww = torch.arange(w - d, d, -1, device=x.device)
    lin = (hh[:, None] * w + ww[None, :]).reshape(-1)  # region pixels in visiting order
    flat = y.reshape(b, ch, n)
    for it in range(iters):
        off = offsets[it].to(x.device).reshape(b, -1, 2).long()
        sh = hh[:, None].expand(-1, len(ww)).reshape(-1)[None] + off[..., 1]
        sw = ww[None, :].expand(len(hh), -1).reshape(-1)[None] + off[..., 0]
        src = torch.arange(n, device=x.device).repeat(b, 1)
        src[:, lin] = sh * w + sw
        in_region = (sh > d) & (sh <= h - d) & (sw > d) & (sw <= w - d)
        chain = torch.zeros(b, n, dtype=torch.bool, device=x.device)
        chain[:, lin] = in_region & (src[:, lin] > lin[None])
        ident = torch.arange(n, device=x.device).repeat(b, 1)
        nxt = torch.where(chain, src, ident)
        while True:
            nxt2 = nxt.gather(1, nxt)
            if torch.equal(nxt2, nxt):
                break
            nxt = nxt2
        final = src.gather(1, nxt)
        flat = flat.gather(2, final[:, None, :].expand(-1, ch, -1))
    y = flat.reshape(b, ch, h, w) / 255.0
    return gaussian_filter(y, sigma).clamp(0, 1).to(x.dtype)


def glass_blur(x: torch.Tensor, c, generator=None) -> torch.Tensor:
    sigma, d, iters = c
    b, _, h, w = x.shape
    rh, rw = max(h - 2 * d, 0), max(w - 2 * d, 0)
    offs = []
    for _ in range(iters):
        # np.random.randint(-d, d): integers in [-d, d)
        u = uniform((b, rh, rw, 2), generator, x.device, torch.float64)
        offs.append(torch.floor(u * (2 * d)).long().clamp(max=2 * d - 1) - d)
    return glass_blur_apply(x, c, offs)


# ----------------------------------------------------------------------------- motion
def _motion_taps(width: int, sigma: float, angles: np.ndarray, h: int, w: int):
    """Kernel weights (B, width) and integer shifts (B, width) of ``_motion_blur``."""
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    k = k / k.sum()
    rad = np.deg2rad(angles)
    p0, p1 = width * np.sin(rad), width * np.cos(rad)
    hyp = np.hypot(p0, p1)
    i = np.arange(width)[None]
    dy = -np.ceil((i * p0[:, None]) / hyp[:, None] - 0.5).astype(np.int64)
    dx = -np.ceil((i * p1[:, None]) / hyp[:, None] - 0.5).astype(np.int64)
    # the reference stops at the first shift reaching the border
    ok = np.cumprod((np.abs(dy) < h) & (np.abs(dx) < w), axis=1).astype(bool)
    return k[None] * ok, dx, dy


def motion_blur_layer(x: torch.Tensor, radius: int, sigma: float, angles: np.ndarray) -> torch.Tensor:
    """``_motion_blur`` on a (B, C, H, W) tensor (any value scale), per-image angles.

    ``shift`` in the reference replicates the border, so each tap is a slice of the
    edge-padded image; the angle differs per image, hence one slice per image and tap.
    """
    b, ch, h, w = x.shape
    width = radius * 2 + 1
    kw, dx, dy = _motion_taps(width, sigma, np.asarray(angles, dtype=np.float64), h, w)
    p = int(min(max(np.abs(dx).max(), np.abs(dy).max()), max(h, w)))
    xp = F.pad(x, (p, p, p, p), mode="replicate") if p else x
    out = torch.zeros_like(x)
    for i in range(b):
        for t in range(width):
            if kw[i, t] == 0:
                continue
            oy, ox = p - int(dy[i, t]), p - int(dx[i, t])  # shifted[y] = img[y - dy]
            out[i].add_(xp[i, :, oy : oy + h, ox : ox + w], alpha=float(kw[i, t]))
    return out


def motion_blur_apply(x: torch.Tensor, c, angles) -> torch.Tensor:
    return motion_blur_layer(x, c[0], c[1], angles).clamp(0, 1)


def motion_blur(x: torch.Tensor, c, generator=None) -> torch.Tensor:
    a = uniform((x.shape[0],), generator, x.device, torch.float64) * 90 - 45
    return motion_blur_apply(x, c, a.cpu().numpy())


# ----------------------------------------------------------------------------- zoom
@functools.lru_cache(maxsize=256)
def _zoom_axis(n: int, z: float):
    """clipped_zoom along one axis: scipy zoom(order=1, grid_mode=False) of the centre crop.

    Returns (i0, i1, frac) for every output sample (length round(ceil(n/z)*z)).
    """
    ch = int(np.ceil(n / float(z)))
    top = (n - ch) // 2
    n_out = int(round(ch * z))
    step = (ch - 1) / (n_out - 1) if n_out > 1 else 0.0
    pos = np.arange(n_out) * step
    i0 = np.floor(pos).astype(np.int64).clip(0, ch - 1)
    f = pos - i0
    i1 = np.minimum(i0 + 1, ch - 1)
    return i0 + top, i1 + top, f


def clipped_zoom(x: torch.Tensor, z: float, out_h: int | None = None, out_w: int | None = None) -> torch.Tensor:
    """imagecorruptions' ``clipped_zoom`` (optionally keeping only the first rows/cols).

    scipy's order-1 zoom is separable linear interpolation at known source positions;
    ``grid_sample(align_corners=True)`` evaluates exactly that in one fused pass.
    """
    b, ch, h, w = x.shape
    coords = []
    for n, keep in ((h, out_h), (w, out_w)):
        i0, _, f = _zoom_axis(n, float(z))
        pos = (i0 + f)[: keep if keep is not None else len(i0)]
        coords.append(torch.from_numpy(pos * 2 / (n - 1) - 1).to(x.device, x.dtype))
    gy, gx = coords
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)
    grid = grid[None].expand(b, -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def zoom_blur(x: torch.Tensor, factors, generator=None) -> torch.Tensor:
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    for z in factors:
        out += clipped_zoom(x, float(z), h, w)
    return ((x + out) / (len(factors) + 1)).clamp(0, 1)
