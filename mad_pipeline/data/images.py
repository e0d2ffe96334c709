"""Safe image decoding: every way an image file can be bad becomes one clear ``ImageDecodeError``.

CMYK, greyscale, palette and RGBA images are valid: they are converted to RGB exactly as open_clip's own transform
does (``Image.convert("RGB")``), so stored features equal open_clip's on the same file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Decompression-bomb guard: refuse anything over this many pixels (PIL warns at its own limit and raises at twice).
MAX_PIXELS = 64_000_000


class ImageDecodeError(Exception):
    pass


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` fully into an RGB PIL image, or raise ImageDecodeError with a one-line reason."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except OSError as e:
        raise ImageDecodeError(f"cannot read file ({e.strerror})") from None
    if size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    return _decode(p, max_pixels)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode image bytes (a tar member, a parquet cell) exactly as :func:`load_image` decodes a file."""
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    return _decode(io.BytesIO(data), max_pixels)


def _decode(fp, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageDecodeError(f"image too large ({w}x{h} pixels > {max_pixels}; decompression bomb?)")
                im.load()  # full decode: truncated data fails here, not later in a worker
                return im.convert("RGB")
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"image too large, decompression bomb refused ({e})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format (corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageDecodeError(f"corrupt or truncated image ({msg})") from None
