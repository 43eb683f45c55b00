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
        out = _filter_rows(out, h, float(sh), mode, truncate)
    if sw > 0:
        out = _filter_cols(out, w, float(sw), mode, truncate)
    return out


_BAND = 32  # output samples per block of the banded matrix products


def band_blocks(m: np.ndarray) -> tuple:
    """(i0, i1, k0, k1) for each block of ``_BAND`` rows of ``m``: [k0, k1) holds every non-zero of rows [i0, i1)."""
    blocks = []
    for i0 in range(0, m.shape[0], _BAND):
        i1 = min(m.shape[0], i0 + _BAND)
        nz = np.flatnonzero(m[i0:i1].any(0))
        k0, k1 = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 1)
        blocks.append((i0, i1, k0, k1))
    return tuple(blocks)


def _banded(x: torch.Tensor) -> bool:
    # On the CPU a product with a banded matrix (a filter, a resampling) is done block by block, skipping
    # the zero weights outside the band. On MKL's AVX-512 path (these machines) each output is one FMA chain
    # over k in order, so leaving out exact-zero terms gives the dense product's bits: what the engine
    # computed before (checked for every corruption and severity). MKL's AVX2 path sums in another order:
    # there banded and dense differ in the last bit, as dense does between the two paths.
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not (x.requires_grad and torch.is_grad_enabled()))  # out= does not record a graph


def matmul_rows(m: torch.Tensor, blocks: tuple, x: torch.Tensor) -> torch.Tensor:
    """``m @ x`` (m: (n_out, n_in), x: (..., n_in, W)), banded on the CPU."""
    if not _banded(x):
        return m.to(x.device, x.dtype) @ x
    out = torch.empty((*x.shape[:-2], m.shape[0], x.shape[-1]), dtype=x.dtype)
    for i0, i1, k0, k1 in blocks:
        torch.matmul(m[i0:i1, k0:k1], x[..., k0:k1, :], out=out[..., i0:i1, :])
    return out


def matmul_cols(x: torch.Tensor, m: torch.Tensor, blocks: tuple) -> torch.Tensor:
    """``x @ m.T`` (x: (..., n_in), m: (n_out, n_in)), banded on the CPU."""
    if not _banded(x):
        return x @ m.to(x.device, x.dtype).T
    n_out, n_in = m.shape
    mt = m.T
    x2 = x.reshape(-1, n_in)
    out = torch.empty((*x.shape[:-1], n_out), dtype=x.dtype)
    o2 = out.view(-1, n_out)
    for j0, j1, k0, k1 in blocks:
        torch.mm(x2[:, k0:k1], mt[k0:k1, j0:j1].contiguous(), out=o2[:, j0:j1])
    return out


@functools.lru_cache(maxsize=128)
def _filter_blocks(n: int, sigma: float, mode: str, truncate: float, dtype: torch.dtype) -> tuple:
    """The filter matrix as a CPU tensor of ``dtype``, and its band blocks."""
    m = _filter_matrix(n, sigma, mode, truncate)
    return torch.from_numpy(m).to(dtype), band_blocks(m)


def _filter_rows(x: torch.Tensor, n: int, sigma: float, mode: str, truncate: float) -> torch.Tensor:
    """``M @ x`` along the rows (dim -2) with the (n, n) filter matrix M."""
    return matmul_rows(*_filter_blocks(n, sigma, mode, truncate, x.dtype), x)


def _filter_cols(x: torch.Tensor, n: int, sigma: float, mode: str, truncate: float) -> torch.Tensor:
    """``x @ M.T`` along the columns (dim -1) with the (n, n) filter matrix M."""
    return matmul_cols(x, *_filter_blocks(n, sigma, mode, truncate, x.dtype))


# ----------------------------------------------------------------------------- gaussian
def gaussian_blur(x: torch.Tensor, sigma: float, generator=None) -> torch.Tensor:
    out = gaussian_filter(x, sigma)
    return out.clamp_(0, 1) if out is not x else out.clamp(0, 1)


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


@functools.lru_cache(maxsize=32)
def _disk_spectrum(radius: int, alias_blur: float, size: tuple, dtype: torch.dtype, device: str) -> torch.Tensor:
    k = torch.from_numpy(_disk(radius, alias_blur).astype(np.float64)).to(device, dtype)
    return torch.fft.rfft2(k, s=size)


def defocus_blur(x: torch.Tensor, c, generator=None) -> torch.Tensor:
    radius, alias = c
    r = _disk(radius, alias).shape[0] // 2
    b, ch, h, w = x.shape
    if r < h and r < w:  # torch's 'reflect' is OpenCV's reflect101 (a copy: same values)
        xp = F.pad(x, (r, r, r, r), mode="reflect")
    else:
        xp = x.index_select(-2, pad_index(h, r, "reflect101", x.device))
        xp = xp.index_select(-1, pad_index(w, r, "reflect101", x.device))
    # correlation with a symmetric kernel = convolution; done by FFT (OpenCV's filter2D
    # also switches to a DFT for kernels this large)
    size = (h + 2 * r, w + 2 * r)
    spec = torch.fft.rfft2(xp).mul_(_disk_spectrum(radius, alias, size, x.dtype, str(x.device)))
    out = torch.fft.irfft2(spec, s=size)
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
    vectorized gathers), which reproduces the sequential loop exactly. The chains are
    followed in visiting order (the offsets' own layout); each pass is then a map of
    source pixels, the passes' maps are composed, and the pixels are moved once.
    """
    return _glass_passes(x, c, [(o[..., 0], o[..., 1]) for o in offsets])


def _glass_passes(x: torch.Tensor, c, steps: list) -> torch.Tensor:
    """glass_blur_apply with the offsets of each pass as a pair (dx, dy) of (B, H-2d, W-2d) integer tensors."""
    sigma, d, iters = c
    b, ch, h, w = x.shape
    # np.uint8(gaussian(x) * 255): truncation (in float64 like the reference); clamping first and
    # then casting (which truncates) is floor-then-clamp for every value
    xd = x.double()
    y = gaussian_filter(xd, sigma)
    y = (y.mul_(255) if y is not xd else y * 255).clamp_(0, 255).to(torch.uint8)
    n = h * w
    rh, rw = max(h - 2 * d, 0), max(w - 2 * d, 0)
    composed = None
    if rh and rw:
        dev = x.device
        # indices flat over the batch (image i's pixel p is i * n + p), int32 where they fit
        it = torch.int32 if b * n < 2**31 else torch.int64
        vis, lin, ident = _glass_grid(b, h, w, d, it, dev)
        for dx, dy in steps[:iters]:
            dx = dx.to(dev, it).contiguous()
            dy = dy.to(dev, it).contiguous()
            # the source pixel of visit (j, k) is visit (j - dy, k - dx) when that is inside the
            # region; it was visited before iff dv = dy * rw + dx > 0 (|dx| <= d < rw)
            hop = (dy * rw).add_(dx).clamp_(min=0)
            # the source can leave the region only in the first d rows or the d columns at either side
            for sl in ((slice(None), slice(0, d)), (slice(None), slice(None), slice(0, d)),
                       (slice(None), slice(None), slice(max(rw - d, 0), None))):
                jd = _glass_rows(rh, rw, dev)[sl[1:]] - dy[sl]
                kd = _glass_cols(rh, rw, dev)[sl[1:]] - dx[sl]
                hop[sl] *= (jd >= 0) & (jd < rh) & (kd >= 0) & (kd < rw)
            nxt = vis - hop.view(-1)
            # pointer doubling, nxt[i] <- nxt[nxt[i]] for all i at once until nothing moves: two
            # rounds on every visit, then only on the few whose pointer still moved
            nxt = nxt.index_select(0, nxt)
            nxt2 = nxt.index_select(0, nxt)
            active = _nonzero(nxt2 != nxt)
            nxt = nxt2
            while active.numel():
                cur = nxt.index_select(0, active)
                new = nxt.index_select(0, cur)
                nxt.index_put_((active,), new)
                active = active[_nonzero(new != cur)]
            src = (dy * w).add_(dx).view(b, -1).add_(lin).view(-1)  # image pixel each visit reads
            final = src.index_select(0, nxt)
            full = ident.clone()
            full.view(b, h, w)[:, d + 1 : h - d + 1, d + 1 : w - d + 1] = final.view(b, rh, rw).flip(1, 2)
            composed = full if composed is None else composed.index_select(0, full)
    if composed is not None:
        local = composed.view(b, n).long().sub_(torch.arange(b, device=composed.device)[:, None] * n)
        y = y.reshape(b, ch, n).gather(2, local[:, None, :].expand(-1, ch, -1)).reshape(b, ch, h, w)
    y = y.double().div_(255.0)
    return gaussian_filter(y, sigma).clamp_(0, 1).to(x.dtype)


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a 1-d bool tensor (numpy's is several times faster on the CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().view(-1)


def _glass_rows(rh, rw, dev):
    return torch.arange(rh, device=dev, dtype=torch.int32)[:, None].expand(rh, rw)


def _glass_cols(rh, rw, dev):
    return torch.arange(rw, device=dev, dtype=torch.int32)[None, :].expand(rh, rw)


def _glass_grid(b: int, h: int, w: int, d: int, dtype, dev):
    """For the whole batch, flat: visit numbers (B*R,), the image pixel of each visit (B, R),
    and the identity map (B*n,)."""
    rh, rw = h - 2 * d, w - 2 * d
    jj = torch.arange(rh, device=dev, dtype=dtype)[:, None]  # visiting order: row j is image row h-d-j
    kk = torch.arange(rw, device=dev, dtype=dtype)[None, :]
    lin = ((h - d - jj) * w + (w - d - kk)).reshape(1, -1)
    lin = lin + torch.arange(b, device=dev, dtype=dtype)[:, None] * (h * w)
    return torch.arange(b * rh * rw, device=dev, dtype=dtype), lin, torch.arange(b * h * w, device=dev, dtype=dtype)


def glass_blur(x: torch.Tensor, c, generator=None) -> torch.Tensor:
    sigma, d, iters = c
    b, _, h, w = x.shape
    rh, rw = max(h - 2 * d, 0), max(w - 2 * d, 0)
    steps = []
    for _ in range(iters):
        # np.random.randint(-d, d): floor(u * 2d) - d, integers in [-d, d); the draws are >= 0, so
        # clamping to 2d - 1 and then truncating is floor-then-clamp
        u = uniform((b, rh, rw, 2), generator, x.device, torch.float64)
        off = u.mul_(2 * d).clamp_(max=2 * d - 1).to(torch.int32).sub_(d)
        steps.append((off[..., 0], off[..., 1]))
    return _glass_passes(x, c, steps)


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
    return motion_blur_layer(x, c[0], c[1], angles).clamp_(0, 1)


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
    out = None
    for z in factors:  # the first term as is: 0 + a is a
        zoomed = clipped_zoom(x, float(z), h, w)
        out = zoomed if out is None else out.add_(zoomed)
    if out is None:
        out = torch.zeros_like(x)
    return out.add_(x).div_(len(factors) + 1).clamp_(0, 1)  # (x + out) / (n + 1)
