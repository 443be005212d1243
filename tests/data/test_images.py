"""images.read_image: conversions, resize policies and every refusal, on tiny files made here."""

import io

import numpy as np
import pytest
from conftest import png_header
from PIL import Image, ImageFile

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
