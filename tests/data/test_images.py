"""images.read_image: conversions, resize policies and every refusal, on tiny files made here."""

import io

import numpy as np
import pytest
from conftest import png_header
from PIL import Image, ImageFile

from jaxcerv.data import images
from jaxcerv.data.images import ImageError, load_image, read_image

S, P = 32, 8  # image side and patch size used throughout


def _solid(mode: str, size: tuple[int, int], value) -> Image.Image:
    return Image.new(mode, size, value)


def _noisy_jpeg(size: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_rgb_stretch_keeps_a_solid_colour(tmp_path):
    path = tmp_path / "rgb.png"
    _solid("RGB", (40, 20), (10, 200, 30)).save(path)
    decoded = read_image(path, image_size=S, patch_size=P)
    assert decoded.pixels.shape == (S, S, 3) and decoded.pixels.dtype == np.uint8
    assert (decoded.pixels == [10, 200, 30]).all()
    assert decoded.conversion is None and (decoded.width, decoded.height) == (40, 20)


def test_pad_letterboxes_centred_on_black(tmp_path):
    path = tmp_path / "wide.png"
    _solid("RGB", (40, 20), (255, 255, 255)).save(path)
    pixels = load_image(path, image_size=S, patch_size=P, resize="pad")
    # 40x20 -> 32x16, pasted at rows 8..24: hand-computed from the aspect ratio.
    expected = np.zeros((S, S, 3), np.uint8)
    expected[8:24] = 255
    np.testing.assert_array_equal(pixels, expected)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise: left half -> top half
    path = tmp_path / "rotated.png"
    Image.fromarray(stored).save(path, exif=exif)
    decoded = read_image(path, image_size=S, patch_size=P, resize="pad")
    assert (decoded.width, decoded.height) == (20, 40)
    pixels = decoded.pixels  # 16 wide x 32 tall, in columns 8..24
    np.testing.assert_array_equal(pixels[4, 16], [255, 0, 0])
    np.testing.assert_array_equal(pixels[28, 16], [0, 0, 255])
    np.testing.assert_array_equal(pixels[16, 2], [0, 0, 0])


@pytest.mark.parametrize(
    "mode, value, expected, conversion",
    [
        ("L", 100, (100, 100, 100), "L -> RGB"),
        # alpha 128 on black: round(c * 128 / 255)
        ("RGBA", (200, 100, 50, 128), (100, 50, 25), "RGBA -> RGB (alpha composited on black)"),
        ("LA", (200, 255), (200, 200, 200), "LA -> RGB (alpha composited on black)"),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255), "CMYK -> RGB"),
    ],
)
def test_modes_are_converted_to_rgb(tmp_path, mode, value, expected, conversion):
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    _solid(mode, (24, 24), value).save(path)
    decoded = read_image(path, image_size=S, patch_size=P)
    assert decoded.mode == mode and decoded.conversion == conversion
    np.testing.assert_allclose(decoded.pixels.reshape(-1, 3), [expected] * S * S, atol=1)


def test_palette_image_uses_its_palette(tmp_path):
    im = Image.new("P", (24, 24), 1)
    im.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    path = tmp_path / "pal.png"
    im.save(path)
    decoded = read_image(path, image_size=S, patch_size=P)
    assert decoded.conversion == "P -> RGB"
    assert (decoded.pixels == [12, 34, 56]).all()


def test_palette_transparency_is_composited(tmp_path):
    im = Image.new("P", (24, 24), 1)
    im.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    path = tmp_path / "pal_t.png"
    im.save(path, transparency=1)  # palette entry 1 fully transparent -> black
    decoded = read_image(path, image_size=S, patch_size=P)
    assert decoded.conversion.startswith("P -> RGB (alpha")
    assert (decoded.pixels == 0).all()


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    values = np.zeros((24, 24), np.uint16)
    values[:, 12:] = 65535
    values[:, :12] = 32768
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = read_image(path, image_size=24, patch_size=P).pixels  # same size: no resampling
    assert read_image(path, image_size=24, patch_size=P).conversion.endswith("(16-bit scaled to 8)")
    np.testing.assert_array_equal(pixels[:, 12:], 255)
    np.testing.assert_array_equal(pixels[:, :12], round(32768 * 255 / 65535))


def test_truncated_jpeg_is_refused(tmp_path):
    data = _noisy_jpeg(64)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as err:
        read_image(path, image_size=S, patch_size=P)
    assert str(path) in str(err.value) and err.value.path == str(path)


def test_truncated_jpeg_is_refused_when_decoded_at_reduced_scale(tmp_path):
    data = _noisy_jpeg(256)  # >= 2x the target: libjpeg's draft (DCT-scaled) decode is used
    path = tmp_path / "cut_big.jpg"
    path.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(ImageError, match="truncated"):
        read_image(path, image_size=S, patch_size=P)


def test_draft_decode_gives_the_right_colour(tmp_path):
    path = tmp_path / "big.jpg"
    _solid("RGB", (400, 300), (30, 140, 220)).save(path, quality=95)
    pixels = load_image(path, image_size=S, patch_size=P)
    np.testing.assert_allclose(pixels.reshape(-1, 3), [(30, 140, 220)] * S * S, atol=3)


def test_garbage_is_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(path, image_size=S, patch_size=P)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        read_image(tmp_path / "absent.png", image_size=S, patch_size=P)


def test_image_smaller_than_a_patch_is_refused(tmp_path):
    path = tmp_path / "tiny.png"
    _solid("RGB", (10, 10), (1, 2, 3)).save(path)
    with pytest.raises(ImageError, match="smaller than one patch"):
        read_image(path, image_size=S, patch_size=16)
    assert read_image(path, image_size=S, patch_size=10).pixels.shape == (S, S, 3)


def test_bomb_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(100_000, 100_000))
    with pytest.raises(ImageError, match="decompression bomb"):
        read_image(path, image_size=S, patch_size=P)


@pytest.mark.parametrize("limit", [100, 300])  # 400 px: above 2x limit (error), above 1x (warning)
def test_pillow_pixel_limit_is_enforced(tmp_path, monkeypatch, limit):
    path = tmp_path / "img.png"
    _solid("RGB", (20, 20), (1, 2, 3)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageError, match="decompression bomb"):
        read_image(path, image_size=S, patch_size=P)


def test_refuses_to_run_with_truncated_loading_enabled(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    _solid("RGB", (20, 20), (1, 2, 3)).save(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(path, image_size=S, patch_size=P)


def test_unknown_resize_policy_is_an_error(tmp_path):
    path = tmp_path / "img.png"
    _solid("RGB", (20, 20), (1, 2, 3)).save(path)
    with pytest.raises(ValueError, match="resize"):
        read_image(path, image_size=S, patch_size=P, resize="crop")


# ------------------------------------------------------------------------- masks and geometry


def _rect_mask(width: int, height: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[rows, cols] = True
    return mask


def test_region_fractions_stretch_hand_case():
    """A 64 x 64 mask, rectangle rows 16-31, cols 32-47 -> 4 x 4 patches of 8 px (32 px): half
    scale, rows 8-15, cols 16-23: exactly patch (1, 2)."""
    mask = _rect_mask(64, 64, slice(16, 32), slice(32, 48))
    expected = np.zeros((4, 4), np.float32)
    expected[1, 2] = 1
    got = images.region_fractions(mask, grid=4, patch_size=8, resize="stretch")
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got.dtype == np.float32 and got.shape == (4, 4)


def test_region_fractions_letterbox_hand_case():
    """A 64 x 32 mask letterboxed into 32 px: 32 x 16 at y0 = 8. Rows 8-15, cols 32-47 -> rows
    12-15, cols 16-23: the lower half of patch (1, 2)."""
    assert images.letterbox_box(64, 32, 32) == (0, 8, 32, 16)
    mask = _rect_mask(64, 32, slice(8, 16), slice(32, 48))
    expected = np.zeros((4, 4), np.float32)
    expected[1, 2] = 0.5
    got = images.region_fractions(mask, grid=4, patch_size=8, resize="pad")
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_region_fractions_area_average_a_partial_patch():
    """Rows 0-5 of a 16 px mask -> 8 px: 3 of the 4 output rows of one patch of 4 px."""
    mask = _rect_mask(16, 16, slice(0, 6), slice(0, 16))
    got = images.region_fractions(mask, grid=2, patch_size=4, resize="stretch")
    np.testing.assert_allclose(got, [[0.75, 0.75], [0, 0]], atol=1e-6)


def test_restored_aspect_matches_the_unsquashed_photograph(tmp_path):
    """A 3:2 photograph squashed to a square, read with its true aspect, lands where the original
    does under "pad", for the pixels and for the mask."""
    w, h, size = 120, 80, 48
    original = np.zeros((h, w, 3), np.uint8)
    original[20:60, 30:90] = (200, 120, 40)
    Image.fromarray(original).save(tmp_path / "original.png")
    Image.fromarray(original).resize((96, 96), Image.Resampling.BICUBIC).save(tmp_path / "sq.png")
    truth = read_image(tmp_path / "original.png", image_size=size, patch_size=8, resize="pad")
    restored = read_image(tmp_path / "sq.png", image_size=size, patch_size=8, resize="pad",
                          aspect=(w, h))
    squashed = read_image(tmp_path / "sq.png", image_size=size, patch_size=8, resize="pad")
    error = np.abs(restored.pixels.astype(int) - truth.pixels).mean()
    assert error < 2
    assert np.abs(squashed.pixels.astype(int) - truth.pixels).mean() > 4 * error  # not restored
    mask = _rect_mask(w, h, slice(20, 60), slice(30, 90))
    sq_mask = np.asarray(Image.fromarray(mask).resize((96, 96), Image.Resampling.NEAREST))
    want = images.region_fractions(mask, grid=6, patch_size=8, resize="pad")
    got = images.region_fractions(sq_mask, grid=6, patch_size=8, resize="pad", aspect=(w, h))
    np.testing.assert_allclose(got, want, atol=0.02)
    # the hand values: 48 px wide letterbox 48 x 32 at y0 = 8; the rectangle -> rows 16-31,
    # cols 12-35: patch rows 2-3 full, patch cols 1 and 4 half, 2-3 full
    expected = np.zeros((6, 6))
    expected[2:4, 2:4] = 1
    expected[2:4, [1, 4]] = 0.5
    np.testing.assert_allclose(got, expected, atol=0.02)
    # stretch: the aspect changes nothing (one resample to the full square either way)
    a = read_image(tmp_path / "sq.png", image_size=size, patch_size=8, aspect=(w, h)).pixels
    b = read_image(tmp_path / "sq.png", image_size=size, patch_size=8).pixels
    np.testing.assert_array_equal(a, b)


def test_read_mask_accepts_0_255_and_bilevel(tmp_path):
    values = np.zeros((6, 8), np.uint8)
    values[2:4, 3:5] = 255
    Image.fromarray(values).save(tmp_path / "m.png")
    Image.fromarray(values).convert("1").save(tmp_path / "b.png")
    for name in ("m.png", "b.png"):
        np.testing.assert_array_equal(images.read_mask(tmp_path / name, size=(8, 6)), values > 0)


def _png_bytes() -> bytes:
    """A 0/255 mask of 8 x 6 px as PNG bytes (noise, so its stream is long enough to cut)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((6, 8)) < 0.5).astype(np.uint8) * 255).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: None, "mask file not found"),
        (lambda p: p.write_bytes(b"not a png"), "not a readable image"),
        (lambda p: Image.new("L", (8, 8)).save(p), "mask is 8x8 px but its image is 8x6"),
        (lambda p: Image.fromarray(np.full((6, 8), 128, np.uint8)).save(p), "not 0/255"),
        (lambda p: Image.new("RGB", (8, 6)).save(p), "mask mode RGB"),
        (lambda p: p.write_bytes(png_header(100_000, 100_000)), "decompression bomb"),
        (lambda p: p.write_bytes(_png_bytes()[:-40]), "corrupt or truncated mask"),
        (lambda p: p.mkdir(), "unreadable mask"),
    ],
    ids=["missing", "garbage", "size", "values", "mode", "bomb", "truncated", "folder"],
)
def test_read_mask_refuses_bad_masks_naming_the_file(tmp_path, make, problem):
    path = tmp_path / "mask.png"
    make(path)
    with pytest.raises(ImageError, match=problem) as info:
        images.read_mask(path, size=(8, 6))
    assert str(path) in str(info.value)
