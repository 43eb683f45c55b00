"""Decoding one image file with PIL, and the errors that mark it corrupt (shared by the folder datasets and the
device decoder's fallback)."""
from __future__ import annotations

from pathlib import Path


def load_rgb(path: str | Path):
    """Decode an image file to an RGB PIL image (grayscale, CMYK, palette... converted)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def decode_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # UnidentifiedImageError and "image file is truncated" are OSErrors; broken headers raise
    # SyntaxError/ValueError in some plugins; absurdly large images raise DecompressionBombError.
    return OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError
