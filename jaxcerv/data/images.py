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

Geometry: `placement` says where a photograph lands in the model's square (stretched over all of
it, or letterboxed at its aspect), and `place` resamples any picture into that box, so an image
and its annotation mask (`read_mask`, `region_fractions`) go through exactly the same geometry.
``aspect`` overrides the stored pixels' aspect for photographs stored squashed (AnnoCerv's 3:2
originals at 384 x 384): restoring it and then letterboxing is one resample into the box of the
true aspect.

Limits: truncated or corrupt files are refused (the whole file is decoded, and Pillow's
`ImageFile.LOAD_TRUNCATED_IMAGES` is never enabled here); images with either side below one patch
are refused; images above Pillow's `Image.MAX_IMAGE_PIXELS` (about 89 Mpx by default, far above any
colposcope) are refused as possible decompression bombs before their pixels are decoded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator
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


@contextlib.contextmanager
def _decoding(name: str, kind: Literal["image", "mask"]) -> Iterator[None]:
    """Every way Pillow fails on a file, as one `ImageError` naming it (for a photograph or a
    mask: the messages say which). Decompression-bomb warnings are errors inside."""
    mask = kind == "mask"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(name, f"refused as a possible decompression bomb ({e})") from None
    except FileNotFoundError:
        raise ImageError(name, "mask file not found" if mask else "file not found") from None
    except (PermissionError, IsADirectoryError) as e:
        raise ImageError(name, f"unreadable {'mask' if mask else 'file'} ({e.strerror})") from None
    except UnidentifiedImageError:
        message = "not a readable image (corrupt or unknown format)"
        raise ImageError(name, f"mask is {message}" if mask else message) from None
    except OSError as e:
        if e.errno is not None:  # the path itself: too long, a symlink loop, an I/O error
            raise ImageError(name, f"unreadable path ({e.strerror})") from None
        raise ImageError(name, f"corrupt or truncated {kind} ({e})") from None
    except (SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated/corrupt streams as OSError, some plugins as SyntaxError.
        raise ImageError(name, f"corrupt or truncated {kind} ({e})") from None


def read_image(
    path: str | os.PathLike[str],
    *,
    image_size: int,
    patch_size: int,
    resize: Resize = "stretch",
    aspect: tuple[int, int] | None = None,
) -> Decoded:
    """Decode `path` fully, validate it and resize it to (image_size, image_size, 3) uint8.

    `aspect`: the photograph's true (width, height) when its pixels were stored squashed; the
    placement uses it instead of the stored size (with "stretch" it changes nothing)."""
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    name = os.fspath(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone else flipped it; we would accept broken files
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must be False")
    with _decoding(name, "image"):
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
    return Decoded(
        pixels=np.asarray(place(rgb, image_size, resize, aspect), dtype=np.uint8),
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


def placement(width: int, height: int, size: int, policy: Resize) -> tuple[int, int, int, int]:
    """Where a width x height photograph lands in the size x size input: x0, y0, w, h (all of it
    for "stretch", the letterbox for "pad")."""
    if policy == "stretch":
        return 0, 0, size, size
    return letterbox_box(width, height, size)


def place(
    im: Image.Image,
    size: int,
    policy: Resize,
    aspect: tuple[int, int] | None = None,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> Image.Image:
    """`im` resampled into its `placement` box on a size x size canvas of zeros (black).

    `aspect` (width, height) replaces `im.size` in the placement (a squashed photograph's true
    aspect). Images use BICUBIC; masks BOX, which averages the area each output pixel covers."""
    x0, y0, w, h = placement(*(aspect or im.size), size, policy)
    canvas = Image.new(im.mode, (size, size))
    canvas.paste(im.resize((w, h), resample), (x0, y0))
    return canvas


def read_mask(path: str | os.PathLike[str], *, size: tuple[int, int]) -> np.ndarray:
    """A 0/255 annotation mask of `size` (width, height: its image's) as a bool array (H, W).

    Anything else is an `ImageError` naming the file: missing, unreadable, not grayscale, values
    other than 0 and 255 (a mask saved with anti-aliasing or as JPEG), another size."""
    name = os.fspath(path)
    with _decoding(name, "mask"), Image.open(name) as im:
        im.load()
        mode, mask_size = im.mode, im.size
        values = np.asarray(im)
    if mask_size != tuple(size):
        raise ImageError(
            name, f"mask is {mask_size[0]}x{mask_size[1]} px but its image is {size[0]}x{size[1]}"
        )
    if mode == "1":
        return values.astype(bool)
    if mode != "L":
        raise ImageError(name, f"mask mode {mode}, expected a grayscale 0/255 mask (mode L)")
    other = np.setdiff1d(np.unique(values), [0, 255])
    if other.size:
        raise ImageError(
            name, f"mask is not 0/255: {other.size} other value(s), e.g. {int(other[0])}"
        )
    return values == 255


def region_fractions(
    region: np.ndarray,
    *,
    grid: int,
    patch_size: int,
    resize: Resize = "stretch",
    aspect: tuple[int, int] | None = None,
) -> np.ndarray:
    """(grid, grid) float32 in [0, 1]: the share of each model patch inside `region` (H, W).

    The region goes through `place` exactly as its image does (same policy, same aspect; BOX
    resampling, so a pixel's value is the share of it the region covers), then is averaged per
    patch; letterbox padding counts as outside."""
    plane = Image.fromarray(np.asarray(region, np.float32), "F")
    placed = np.asarray(place(plane, grid * patch_size, resize, aspect, Image.Resampling.BOX))
    fractions = placed.reshape(grid, patch_size, grid, patch_size).mean(axis=(1, 3))
    return np.clip(fractions, 0.0, 1.0).astype(np.float32)
