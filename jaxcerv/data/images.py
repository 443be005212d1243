"""Decode and validate one image file into the model's uint8 RGB square.

Shared by the dataset builders and by `predict`, so a photograph is turned into pixels the same way
at build time and at inference time. Every failure is an `ImageError` that names the file and the
problem, so callers can skip the file with a reason instead of dying with a traceback.

Conversions (reported in `Decoded.conversion`, e.g. "L -> RGB"):
- EXIF orientation is applied first (cameras store portrait shots rotated).
- Grayscale, CMYK, YCbCr, bilevel and palette images are converted to RGB.
- Alpha (RGBA, LA, PA, palette with transparency) is composited on black: transparent areas carry
  no tissue, and black is also the colour of the letterbox padding, so the model sees one "nothing"
  colour.
- 16/32-bit integer grayscale (PNG "I;16", "I") is scaled to 8 bits by its nominal range
  (65535 -> 255); float ("F") images are refused because their range is unknown.

Limits: truncated or corrupt files are refused (the whole file is decoded, and Pillow's
`ImageFile.LOAD_TRUNCATED_IMAGES` is never enabled here); images with either side below one patch
are refused; images above Pillow's `Image.MAX_IMAGE_PIXELS` (about 89 Mpx by default, far above any
colposcope) are refused as possible decompression bombs before their pixels are decoded.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

Resize = Literal["stretch", "pad"]
RESIZE_POLICIES: tuple[str, ...] = ("stretch", "pad")

# Modes that convert to RGB without losing anything a colposcopy model can use.
_TO_RGB = {"L": "L -> RGB", "1": "1 -> RGB", "CMYK": "CMYK -> RGB", "YCbCr": "YCbCr -> RGB",
           "RGBX": "RGBX -> RGB"}
_HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class Decoded:
    """Pixels ready for the model plus what was done to get them (for build summaries)."""

    pixels: np.ndarray  # uint8 (S, S, 3)
    width: int  # original size, after EXIF orientation
    height: int
    mode: str  # original Pillow mode
    conversion: str | None  # e.g. "RGBA -> RGB (alpha on black)", None when already RGB


def read_image(
    path: str | os.PathLike[str],
    *,
    image_size: int,
    patch_size: int,
    resize: Resize = "stretch",
) -> Decoded:
    """Decode `path` fully, validate it and resize it to (image_size, image_size, 3) uint8."""
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    name = os.fspath(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone else flipped it; we would accept broken files
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must be False")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(name) as im:
                width, height = _oriented_size(im)
                if min(width, height) < patch_size:
                    raise ImageError(
                        name,
                        f"image is {width}x{height} px, smaller than one patch ({patch_size} px)",
                    )
                # JPEG only: let libjpeg decode at a reduced scale when we shrink a lot anyway. It
                # still reads the whole entropy-coded stream, so truncation is still detected.
                if im.format == "JPEG" and max(width, height) >= 2 * image_size:
                    im.draft("RGB", (image_size, image_size))
                im.load()
                mode = im.mode
                im = ImageOps.exif_transpose(im)
                rgb, conversion = _to_rgb(im, name)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(name, f"refused as a possible decompression bomb ({e})") from None
    except FileNotFoundError:
        raise ImageError(name, "file not found") from None
    except (PermissionError, IsADirectoryError) as e:
        raise ImageError(name, f"unreadable file ({e.strerror})") from None
    except UnidentifiedImageError:
        raise ImageError(name, "not a readable image (corrupt or unknown format)") from None
    except OSError as e:
        if e.errno is not None:  # the path itself: too long, a symlink loop, an I/O error
            raise ImageError(name, f"unreadable path ({e.strerror})") from None
        raise ImageError(name, f"corrupt or truncated image ({e})") from None
    except (SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated/corrupt streams as OSError, some plugins as SyntaxError.
        raise ImageError(name, f"corrupt or truncated image ({e})") from None
    return Decoded(
        pixels=_resize(rgb, image_size, resize),
        width=width,
        height=height,
        mode=mode,
        conversion=conversion,
    )


def load_image(
    path: str | os.PathLike[str], *, image_size: int, patch_size: int, resize: Resize = "stretch"
) -> np.ndarray:
    """`read_image(...).pixels`: uint8 (image_size, image_size, 3)."""
    return read_image(path, image_size=image_size, patch_size=patch_size, resize=resize).pixels


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """Size after EXIF orientation, read from the header without decoding pixels."""
    width, height = im.size
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not hide the image; exif_transpose copes too
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _to_rgb(im: Image.Image, name: str) -> tuple[Image.Image, str | None]:
    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode in _TO_RGB:
        return im.convert("RGB"), _TO_RGB[mode]
    if mode in _HIGH_BIT_DEPTH:
        values = np.asarray(im).astype(np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise ImageError(name, f"{mode} values outside 0..65535, cannot scale to 8 bits")
        gray = np.round(values * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB"), f"{mode} -> RGB (16-bit scaled to 8)"
    if mode == "P" and "transparency" not in im.info:
        return im.convert("RGB"), "P -> RGB"
    if mode in ("RGBA", "LA", "PA", "P", "La", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
        return (
            Image.fromarray(np.round(rgb).astype(np.uint8), "RGB"),
            f"{mode} -> RGB (alpha composited on black)",
        )
    raise ImageError(name, f"unsupported image mode {mode}")


def letterbox_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Where ``resize="pad"`` puts a width x height photo in the size x size input: x0, y0, w, h
    (also how a heatmap is cropped back to the photo)."""
    scale = size / max(width, height)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    return (size - new_w) // 2, (size - new_h) // 2, new_w, new_h


def _resize(im: Image.Image, size: int, policy: Resize) -> np.ndarray:
    if policy == "stretch":
        return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)
    x0, y0, new_w, new_h = letterbox_box(*im.size, size)
    canvas = Image.new("RGB", (size, size))  # black letterbox
    canvas.paste(im.resize((new_w, new_h), Image.Resampling.BICUBIC), (x0, y0))
    return np.asarray(canvas, dtype=np.uint8)
