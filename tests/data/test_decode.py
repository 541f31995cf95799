"""Tests for mobilevision.data.decode: every image the readers may meet, good and broken."""

import io
import pickle
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from mobilevision.data import decode
from mobilevision.data.decode import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    decode_image_bytes,
    is_image_file,
    read_image,
)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _noise_rgb(h=32, w=48, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _check_rgb(pixels, h, w):
    assert pixels.dtype == np.uint8
    assert pixels.shape == (h, w, 3)
    assert pixels.flags.c_contiguous and pixels.flags.writeable


# ---------------------------------------------------------------- good files


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("BMP", ".bmp")])
def test_lossless_rgb_round_trip(tmp_path, fmt, suffix):
    rgb = _noise_rgb()
    path = tmp_path / f"x{suffix}"
    Image.fromarray(rgb).save(path, fmt)
    pixels = read_image(path)
    _check_rgb(pixels, 32, 48)
    np.testing.assert_array_equal(pixels, rgb)


def test_jpeg_rgb_channel_order(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 220  # red: a BGR mix-up would show up as blue
    path = tmp_path / "red.JPG"
    Image.fromarray(rgb).save(path, "JPEG", quality=95)
    pixels = read_image(path)
    _check_rgb(pixels, 16, 16)
    assert abs(int(pixels[8, 8, 0]) - 220) <= 3 and pixels[8, 8, 2] <= 5


def test_path_as_str_and_bytes(tmp_path):
    """tf.numpy_function hands the path over as bytes."""
    path = tmp_path / "x.png"
    Image.fromarray(_noise_rgb()).save(path)
    a = read_image(str(path))
    np.testing.assert_array_equal(a, read_image(str(path).encode()))
    np.testing.assert_array_equal(a, read_image(np.array(str(path).encode())))


def test_exif_orientation_6_rotates_png_exactly(tmp_path):
    rgb = _noise_rgb(10, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.png"
    Image.fromarray(rgb).save(path, exif=exif)
    pixels = read_image(path)
    assert pixels.shape == (20, 10, 3)
    np.testing.assert_array_equal(pixels, np.rot90(rgb, k=-1))


def test_exif_orientation_6_rotates_jpeg(tmp_path):
    rgb = np.zeros((40, 80, 3), np.uint8)
    rgb[:, :40] = (255, 0, 0)  # left half red
    rgb[:, 40:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "camera.jpg"
    Image.fromarray(rgb).save(path, "JPEG", quality=95, exif=exif)
    pixels = read_image(path)
    assert pixels.shape == (80, 40, 3)  # portrait after rotation
    # Rotating clockwise moves the left edge to the top.
    assert pixels[10, 20, 0] > 200 and pixels[10, 20, 2] < 50
    assert pixels[70, 20, 2] > 200 and pixels[70, 20, 0] < 50


def test_exif_orientation_1_is_untouched(tmp_path):
    rgb = _noise_rgb(10, 20)
    exif = Image.Exif()
    exif[0x0112] = 1
    path = tmp_path / "upright.png"
    Image.fromarray(rgb).save(path, exif=exif)
    np.testing.assert_array_equal(read_image(path), rgb)


def test_sixteen_bit_gray_png_scales_not_clips(tmp_path):
    values = np.array([[0, 255, 256, 32768, 65535, 65280]], np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = read_image(path)
    _check_rgb(pixels, 1, 6)
    np.testing.assert_array_equal(pixels[0, :, 0], [0, 0, 1, 128, 255, 255])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_sixteen_bit_gray_png_written_by_opencv(tmp_path):
    values = np.array([[65535, 32768], [0, 4096]], np.uint16)
    path = tmp_path / "cv16.png"
    cv2.imwrite(str(path), values)
    np.testing.assert_array_equal(read_image(path)[..., 1], [[255, 128], [0, 16]])


def test_sixteen_bit_rgb_png(tmp_path):
    rgb16 = np.zeros((2, 3, 3), np.uint16)
    rgb16[0, :, 0] = [65535, 32768, 256]  # red channel
    rgb16[1, :, 2] = [65535, 32768, 512]  # blue channel
    path = tmp_path / "rgb48.png"
    cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes BGR
    pixels = read_image(path)
    _check_rgb(pixels, 2, 3)
    np.testing.assert_array_equal(pixels, (rgb16 >> 8).astype(np.uint8))


def test_opencv_fallback_when_pillow_cannot_identify(tmp_path, monkeypatch):
    """If Pillow cannot open a 16-bit file, OpenCV decodes it, in RGB order, scaled >> 8."""
    rgb16 = np.zeros((2, 2, 3), np.uint16)
    rgb16[0, 0] = (65535, 0, 0)
    rgb16[1, 1] = (0, 0, 32768)
    path = tmp_path / "exotic.png"
    cv2.imwrite(str(path), rgb16[..., ::-1])

    def refuse(*args, **kwargs):
        raise decode.UnidentifiedImageError("cannot identify image file")

    monkeypatch.setattr(decode.Image, "open", refuse)
    pixels = read_image(path)
    np.testing.assert_array_equal(pixels, (rgb16 >> 8).astype(np.uint8))


@pytest.mark.parametrize("colour", [(200, 40, 90), (20, 180, 60), (250, 250, 250)])
def test_cmyk_jpeg_colour(tmp_path, colour):
    cmyk = Image.new("RGB", (16, 16), colour).convert("CMYK")
    path = tmp_path / "print.jpg"
    cmyk.save(path, "JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    pixels = read_image(path)
    _check_rgb(pixels, 16, 16)
    np.testing.assert_allclose(pixels[8, 8].astype(int), colour, atol=6)


def test_rgba_alpha_dropped_colour_kept(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 120, 230)
    rgba[0, 0, 3] = 0  # fully transparent pixel keeps its stored colour
    rgba[1:, :, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)  # (H, W, 4) uint8 -> RGBA
    pixels = read_image(path)
    _check_rgb(pixels, 4, 4)
    assert (pixels == (10, 120, 230)).all()


def test_gray_la_and_bilevel(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray).save(tmp_path / "l.png")
    Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")
    Image.fromarray(gray).convert("1").save(tmp_path / "one.png")
    for name in ("l.png", "la.png"):
        pixels = read_image(tmp_path / name)
        _check_rgb(pixels, 8, 8)
        for c in range(3):
            np.testing.assert_array_equal(pixels[..., c], gray)
    bilevel = read_image(tmp_path / "one.png")
    _check_rgb(bilevel, 8, 8)
    assert set(np.unique(bilevel)) <= {0, 255}


def test_gray_jpeg(tmp_path):
    Image.new("L", (12, 10), 77).save(tmp_path / "g.jpg", quality=95)
    pixels = read_image(tmp_path / "g.jpg")
    _check_rgb(pixels, 10, 12)
    assert np.abs(pixels.astype(int) - 77).max() <= 2


@pytest.mark.parametrize("transparency", [False, True])
def test_palette(tmp_path, transparency):
    index = np.array([[0, 1], [2, 1]], np.uint8)
    image = Image.fromarray(index)
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    assert image.mode == "P"
    kwargs = {"transparency": 1} if transparency else {}
    path = tmp_path / "palette.png"
    image.save(path, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # P + transparency -> RGB must not warn
        pixels = read_image(path)
    expected = np.array([[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (0, 255, 0)]], np.uint8)
    np.testing.assert_array_equal(pixels, expected)


def test_decode_bytes_matches_read_image(tmp_path):
    rgb = _noise_rgb()
    data = _encode(Image.fromarray(rgb), "PNG")
    (tmp_path / "x.png").write_bytes(data)
    np.testing.assert_array_equal(decode_image_bytes(data), read_image(tmp_path / "x.png"))
    np.testing.assert_array_equal(decode_image_bytes(bytearray(data)), rgb)


# ---------------------------------------------------------------- broken files


def _raises(path, *words):
    with pytest.raises(ImageDecodeError) as info:
        read_image(path)
    error = info.value
    assert error.path == str(path)
    assert str(error).startswith(str(path) + ": ")
    for word in words:
        assert word in error.reason, error.reason
    return error


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_jpeg_raises_naming_path(tmp_path, fraction):
    data = _encode(Image.fromarray(_noise_rgb(64, 64)), "JPEG")
    path = tmp_path / "data" / "cut.jpg"
    path.parent.mkdir()
    path.write_bytes(data[: int(len(data) * fraction)])
    error = _raises(path, "truncated JPEG")
    assert "cut.jpg: truncated JPEG (image file is truncated" in str(error)


def test_truncated_jpeg_raises_even_if_pillow_told_to_tolerate(tmp_path, monkeypatch):
    """Another library may switch LOAD_TRUNCATED_IMAGES on; we still refuse, and restore it."""
    data = _encode(Image.fromarray(_noise_rgb(64, 64)), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    _raises(path, "truncated JPEG")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_truncated_jpeg_header_only(tmp_path):
    data = _encode(Image.fromarray(_noise_rgb(64, 64)), "JPEG")
    path = tmp_path / "stub.jpg"
    path.write_bytes(data[:20])
    _raises(path, "JPEG")


@pytest.mark.parametrize("cut", [60, 0.5])
def test_truncated_png_raises(tmp_path, cut):
    data = _encode(Image.fromarray(_noise_rgb(64, 64)), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: cut if isinstance(cut, int) else int(len(data) * cut)])
    _raises(path, "truncated PNG")


def test_png_header_only(tmp_path):
    data = _encode(Image.fromarray(_noise_rgb(8, 8)), "PNG")
    path = tmp_path / "stub.png"
    path.write_bytes(data[:12])
    _raises(path, "PNG")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _raises(path, "empty")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n" * 10)
    _raises(path, "not an image")


def test_missing_file(tmp_path):
    _raises(tmp_path / "nowhere.png", "not found")


def test_directory(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    _raises(tmp_path / "folder.jpg", "directory")


def test_decode_bytes_error_default_label():
    with pytest.raises(ImageDecodeError, match=r"^<bytes>: empty"):
        decode_image_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"^mem\.png: not an image"):
        decode_image_bytes(b"\x00" * 100, path="mem.png")


def test_error_is_value_error_and_pickles():
    error = ImageDecodeError("a/b.jpg", "truncated JPEG (x)")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.reason, str(copy)) == ("a/b.jpg", "truncated JPEG (x)", "a/b.jpg: truncated JPEG (x)")


# ---------------------------------------------------------------- extensions


def test_image_extensions():
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".bmp")
    for good in ("a.jpg", "A.JPG", "dir/x.Jpeg", "x.png", "x.BMP", b"x.png"):
        assert is_image_file(good), good
    for bad in ("x.gif", "x.jpg.txt", "jpg", "x.pngx", "notes.txt"):
        assert not is_image_file(bad), bad
    from pathlib import Path

    assert is_image_file(Path("a/b.PNG"))
