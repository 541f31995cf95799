"""Robust image decoding shared by every reader.

Every reader (COCO, VOC, image folders, predict) turns a file into pixels through `read_image`,
so that all of them agree on orientation, colour and bit depth, and so that a broken file stops
the run with its path instead of feeding the model a wrong image.

Pillow does the decoding because it raises on truncated JPEG/PNG data; OpenCV fills the missing
rows with gray and returns success, which is a silent wrong answer. OpenCV is only a fallback for
a file Pillow cannot identify at all (e.g. an exotic bit depth), and its result is still checked.

The functions keep no state of their own, so they are safe to call from the threads of
`tf.data` (`tf.numpy_function`) and from worker processes.
"""

from __future__ import annotations

import io
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

# Leading bytes of the formats we expect; used to say "truncated PNG" rather than "not an image"
# when a file is too short for Pillow to identify.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_truncation_lock = threading.Lock()


class ImageDecodeError(ValueError):
    """An image file could not be decoded.

    Attributes:
        path: the file (or "<bytes>" label) that failed, as a string.
        reason: what was wrong, e.g. "truncated JPEG (image file is truncated)".
    """

    def __init__(self, path, reason: str):
        self.path = _path_str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keeps the attributes when the error crosses a process boundary
        return (type(self), (self.path, self.reason))


def is_image_file(path) -> bool:
    """True if `path` (str, Path or bytes) ends with one of IMAGE_EXTENSIONS, any letter case."""
    return _path_str(path).lower().endswith(IMAGE_EXTENSIONS)


def read_image(path) -> np.ndarray:
    """Read an image file into RGB pixels.

    Args:
        path: str, os.PathLike or bytes (what `tf.numpy_function` passes for a string tensor).

    Returns:
        np.ndarray of shape (H, W, 3), dtype uint8, RGB, with EXIF orientation applied.

    Raises:
        ImageDecodeError: missing, unreadable, empty, truncated, corrupt or non-image file.
    """
    name = _path_str(path)
    return decode_image_bytes(read_file_bytes(name), path=name)


def read_file_bytes(path) -> bytes:
    """The contents of an image file (str, os.PathLike or bytes path).

    Raises ImageDecodeError (file not found, a directory, permission denied, cannot read) naming
    the file, with the reasons `read_image` reports."""
    name = _path_str(path)
    try:
        with open(name, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageDecodeError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(name, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageDecodeError(name, "permission denied") from None
    except OSError as e:
        raise ImageDecodeError(name, f"cannot read file ({e.strerror or e})") from None


def image_size(path) -> tuple[int, int]:
    """(height, width) of the image `read_image` would return (EXIF orientation applied), read
    from the file's header without decoding the pixels (about 0.15 ms a file).

    Raises ImageDecodeError for a file that is missing or cannot be identified; a file whose
    header is good but whose data is cut off passes here and fails in `read_image`."""
    try:
        with Image.open(path) as image:
            w, h = image.size
            try:
                if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                    h, w = w, h
            except Exception:  # a malformed EXIF block: read_image shows the pixels as stored
                pass
            return h, w
    except Exception:
        pixels = read_image(path)  # raises ImageDecodeError with the reason
        return pixels.shape[:2]


def decode_image_bytes(data: bytes, path="<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, anything Pillow reads) into RGB pixels.

    Handles EXIF orientation, grayscale (L, LA, 1), palette (P, with or without transparency),
    RGBA/LA (alpha dropped, colour kept), CMYK JPEG (incl. Adobe inverted), 16-bit gray and RGB
    PNG (scaled to 8 bit by keeping the high byte: 65535 -> 255, 32768 -> 128).

    Args:
        data: the encoded file contents.
        path: name used in error messages.

    Returns:
        np.ndarray of shape (H, W, 3), dtype uint8, RGB, C-contiguous and writable.

    Raises:
        ImageDecodeError: empty, truncated, corrupt or non-image data.
    """
    data = bytes(data)
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    sniffed = _sniff(data)
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        # 33 bytes = PNG signature + IHDR: anything shorter is just cut off, not exotic.
        if sniffed in ("PNG", "TIFF") and len(data) >= 33:
            # Pillow cannot identify some bit depths it does not support; OpenCV may.
            pixels = _decode_with_opencv(data)
            if pixels is not None:
                return pixels
        if sniffed is not None:
            raise ImageDecodeError(path, f"truncated or corrupt {sniffed} (cannot identify image file)") from None
        raise ImageDecodeError(path, "not an image (cannot identify image file)") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(path, f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(path, _describe(sniffed, e)) from None

    fmt = image.format or sniffed or "image"
    try:
        with _truncated_images_raise():
            image.load()
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(path, f"image too large ({e})") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, struct.error, ... on bad data
        raise ImageDecodeError(path, _describe(fmt, e)) from None

    try:
        image = _apply_exif_orientation(image)
        return _to_rgb8(image)
    except Exception as e:
        raise ImageDecodeError(path, f"cannot convert {fmt} mode {image.mode} to RGB ({e})") from None


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """Pillow image of any mode -> (H, W, 3) uint8 RGB array."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # 16-bit gray (PNG gives I;16, older Pillow gives I): keep the high byte. `convert("L")`
        # would clip every value above 255 to white instead of scaling.
        values = np.asarray(image)
        if mode == "I":
            values = np.clip(values, 0, 65535)
        gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in image.info:
        # Pillow warns on P -> RGB with transparency; going through RGBA drops alpha quietly.
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    pixels = np.array(image, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"unexpected decoded shape {pixels.shape}")
    return pixels


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation 1..8 that `decode_image_bytes` applies to an opened Pillow image:
    1 (as stored) when the tag is missing, malformed or not one of 2..8."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        # A malformed EXIF block is common in the wild; like every other viewer we then show the
        # pixels as stored rather than rejecting an otherwise good image.
        return 1
    return orientation if orientation in (2, 3, 4, 5, 6, 7, 8) else 1


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says; only copy when there is something to do."""
    if exif_orientation(image) != 1:
        transposed = ImageOps.exif_transpose(image)
        if transposed is not None:
            return transposed
    return image


def _decode_with_opencv(data: bytes):
    """Fallback for bit depths Pillow cannot open. Returns (H, W, 3) uint8 RGB or None."""
    import cv2  # lazy: only needed for rare files

    # ANYDEPTH keeps 16-bit samples, ANYCOLOR keeps gray/colour, and unlike IMREAD_UNCHANGED this
    # flag set still applies EXIF orientation. Alpha is dropped.
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if pixels is None:
        return None
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        return None
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    elif pixels.shape[2] == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    else:
        return None
    return np.ascontiguousarray(pixels)


@contextmanager
def _truncated_images_raise():
    """Make `Image.load` raise on truncated data.

    `ImageFile.LOAD_TRUNCATED_IMAGES` is a process-wide flag and is False by default, in which case
    nothing is touched (the common, lock-free path). If some other library switched it on, we turn
    it off for the duration of our load under a lock and restore it afterwards.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _truncation_lock:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _describe(fmt, error: BaseException) -> str:
    message = str(error) or type(error).__name__
    fmt = fmt or "image"
    if "truncated" in message.lower() or isinstance(error, EOFError):
        return f"truncated {fmt} ({message})"
    return f"corrupt {fmt} ({message})"


def _sniff(data: bytes):
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _path_str(path) -> str:
    if isinstance(path, (bytes, bytearray)):
        return os.fsdecode(bytes(path))
    if isinstance(path, np.ndarray) and path.shape == ():  # a scalar from tf.numpy_function
        return _path_str(path.item())
    if isinstance(path, (str, Path)) or hasattr(path, "__fspath__"):
        return os.fspath(path)
    return str(path)
