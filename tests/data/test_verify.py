"""Tests for the graph decode path (mobilevision.data.verify + pipeline.decode_file): every kind of
file gives the pixels (or the skip report) of the Pillow path, and the verification cache is
reused until a file changes."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mobilevision.data import verify
from mobilevision.data.decode import ImageDecodeError, read_image
from mobilevision.data.graph_decode import graph_decode_label
from mobilevision.data.pipeline import decode_file, image_files, read_verified
from mobilevision.data.skips import SKIPPED


def _noise(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _photo(h=48, w=64):
    """Smooth gradients plus noise: JPEG decoders' rounding differences show on it."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], -1)
    noise = np.random.default_rng(1).normal(0, 20, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _palette():
    image = Image.fromarray(_noise()).convert("P", palette=Image.Palette.ADAPTIVE, colors=40)
    assert image.mode == "P"
    return image


def _truncated(path):
    Image.fromarray(_noise(64, 64)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact: it fails while decoding


# name -> writer(path). Each file decodes through the graph path as through Pillow.
GOOD = {
    "photo_q75.jpg": lambda p: Image.fromarray(_photo()).save(p, quality=75),
    "photo_q95_444.jpg": lambda p: Image.fromarray(_photo()).save(p, quality=95, subsampling=0),
    "progressive.jpg": lambda p: Image.fromarray(_photo()).save(p, quality=90, progressive=True),
    "gray.jpg": lambda p: Image.fromarray(_photo()[..., 0]).save(p, quality=90),
    "cmyk.jpg": lambda p: Image.fromarray(_photo()).convert("CMYK").save(p, quality=90),
    **{f"exif{o}.jpg": (lambda o: lambda p: Image.fromarray(_photo()).save(
        p, quality=90, exif=_exif(o)))(o) for o in range(1, 9)},
    "exif6.png": lambda p: Image.fromarray(_noise()).save(p, exif=_exif(6)),
    "rgb.png": lambda p: Image.fromarray(_noise()).save(p),
    "gray.png": lambda p: Image.fromarray(_noise()[..., 0]).save(p),
    "la.png": lambda p: Image.fromarray(_noise()[..., 0]).convert("LA").save(p),
    "rgba.png": lambda p: Image.fromarray(np.concatenate([_noise(), _noise(seed=2)[..., :1]], 2),
                                          "RGBA").save(p),
    "bilevel.png": lambda p: Image.fromarray(_noise()[..., 0]).convert("1").save(p),
    "palette.png": lambda p: _palette().save(p),
    "palette_transparent.png": lambda p: _palette().save(p, transparency=3),
    "gray16.png": lambda p: Image.fromarray(
        np.random.default_rng(3).integers(0, 65536, (20, 30)).astype(np.uint16)).save(p),
    "rgb.bmp": lambda p: Image.fromarray(_noise()).save(p),
    "palette.bmp": lambda p: _palette().save(p),
    "tiff.jpg": lambda p: Image.fromarray(_noise()).save(p, "TIFF"),  # named .jpg
}
# Files TensorFlow decodes differently from Pillow: read from a lossless copy instead.
# TF reads a palette BMP's indices as gray values, and cannot decode a TIFF: the verification
# decodes a folder's files in one graph call, and file by file when TF refuses one of them.
COPIED = {"palette.bmp", "tiff.jpg"}
# name -> (writer, the reason recorded in SKIPPED, as the Pillow path records it)
BROKEN = {
    "truncated.jpg": (_truncated, "truncated JPEG"),
    "zero.jpg": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "truncated.png": (lambda p: p.write_bytes(_png_bytes()[:200]), "truncated PNG"),
    "notes.jpg": (lambda p: p.write_text("not a picture"), "not an image"),
}


def _png_bytes():
    buffer = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buffer, "PNG")
    return buffer.getvalue()


def _graph_decode(table):
    """Run the pipeline's decode over `image_files` rows -> [(image, ok)] in order."""
    ds = tf.data.Dataset.from_tensor_slices(table).map(decode_file)
    return list(ds.as_numpy_iterator())


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    """Every kind written into one folder, verified and decoded through the graph path once."""
    folder = tmp_path_factory.mktemp("kinds")
    for name, write in GOOD.items():
        write(folder / name)
    for name, (write, _) in BROKEN.items():
        write(folder / name)
    paths = sorted(str(folder / name) for name in [*GOOD, *BROKEN])
    result = verify.verify_images(paths, quiet=True)
    out = dict(zip([os.path.basename(p) for p in paths], _graph_decode(image_files(paths))))
    return folder, result, out


@pytest.mark.parametrize("name", GOOD)
def test_graph_path_gives_pillows_pixels(decoded, name):
    """JPEG (accurate IDCT: 0 levels off), EXIF orientation 1-8 as a transpose, grayscale, CMYK,
    RGBA, LA, bilevel, palette, 16-bit, BMP: exactly read_image's pixels."""
    folder, result, out = decoded
    image, ok = out[name]
    assert ok
    np.testing.assert_array_equal(image, read_image(folder / name))
    assert (str(folder / name) in result.copied) == (name in COPIED), result.copied


@pytest.mark.parametrize("name", BROKEN)
def test_graph_path_skips_what_pillow_refuses_with_its_reason(decoded, name):
    folder, result, out = decoded
    path = str(folder / name)
    image, ok = out[name]
    assert not ok and image.shape == (1, 1, 3)
    with pytest.raises(ImageDecodeError) as info:
        read_image(path)
    assert SKIPPED.items()[path] == result.skipped[path] == info.value.reason
    assert BROKEN[name][1] in info.value.reason


def test_copies_are_hidden_beside_the_data_and_cache_is_json(decoded):
    folder, result, _ = decoded
    assert result.cache_dir == folder
    cache = json.loads((folder / verify.CACHE_FILES["image"]).read_text())
    assert set(cache["files"]) == {*GOOD, *BROKEN}
    copies = sorted(os.listdir(folder / verify.COPY_FOLDER))
    assert copies == sorted(cache["files"][name]["copy"] for name in COPIED)
    assert "TIFF RGB: TensorFlow cannot decode it" in result.copied[str(folder / "tiff.jpg")]


# ------------------------------------------------------------------------------------ the cache


@pytest.fixture
def counted(monkeypatch):
    """Counts the files the verification opens."""
    opened = []
    read = verify._read_image

    def counting(path):
        opened.append(os.path.basename(path))
        return read(path)

    monkeypatch.setattr(verify, "_read_image", counting)
    return opened


def _folder(tmp_path, n=3):
    for i in range(n):
        Image.fromarray(_noise(seed=i)).save(tmp_path / f"{i}.jpg", quality=90)
    Image.fromarray(_noise()).convert("P").save(tmp_path / "p.bmp")  # has a copy
    return sorted(str(p) for p in tmp_path.iterdir() if p.is_file())


def test_cache_is_reused_and_rebuilt_for_changed_files_only(tmp_path, counted):
    paths = _folder(tmp_path)
    assert verify.verify_images(paths, quiet=True).checked == 4 and len(counted) == 4
    again = verify.verify_images(paths, quiet=True)
    assert again.checked == 0 and len(counted) == 4  # nothing reopened
    assert again.table()["source"].tolist() == verify.verify_images(paths, quiet=True).table()[
        "source"].tolist()

    st = os.stat(paths[0])  # same size, new mtime
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    Image.fromarray(_noise(seed=9)).save(paths[1], quality=50)  # new size
    counted.clear()
    assert verify.verify_images(paths, quiet=True).checked == 2
    assert sorted(counted) == ["0.jpg", "1.jpg"]

    Image.fromarray(_noise(seed=5)).save(tmp_path / "new.jpg")  # an added file
    counted.clear()
    result = verify.verify_images([*paths, str(tmp_path / "new.jpg")], quiet=True)
    assert counted == ["new.jpg"] and result.checked == 1

    for copy in (tmp_path / verify.COPY_FOLDER).iterdir():  # a copy deleted
        copy.unlink()
    counted.clear()
    assert verify.verify_images(paths, quiet=True).checked == 1 and counted == ["p.bmp"]

    os.unlink(paths[2])  # a removed file: reported, and its entry dropped from the cache
    counted.clear()
    result = verify.verify_images(paths, quiet=True)
    assert counted == ["2.jpg"] and result.skipped == {paths[2]: "file not found"}
    files = json.loads((tmp_path / verify.CACHE_FILES["image"]).read_text())["files"]
    assert "2.jpg" not in files and "new.jpg" in files  # another list's entries are kept


def test_cache_rebuilt_when_decoders_change(tmp_path, counted, monkeypatch):
    paths = _folder(tmp_path, n=1)
    verify.verify_images(paths, quiet=True)
    fingerprint = verify._fingerprint
    monkeypatch.setattr(verify, "_fingerprint", lambda kind: {**fingerprint(kind),
                                                              "tensorflow": "0.0"})
    counted.clear()
    assert verify.verify_images(paths, quiet=True).checked == 2


def test_unwritable_folder_caches_in_the_user_cache(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    paths = _folder(data, n=1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(verify.os, "access", lambda path, mode: False)
    result = verify.verify_images(paths, quiet=True)
    assert result.cache_dir.parent == tmp_path / "cache" / "mobilevision" / "verified"
    assert not (data / verify.CACHE_FILES["image"]).exists()
    assert not (data / verify.COPY_FOLDER).exists()
    image, ok = _graph_decode(result.table())[-1]  # p.bmp, from its copy in the user cache
    assert ok
    np.testing.assert_array_equal(image, read_image(paths[-1]))
    assert verify.verify_images(paths, quiet=True).checked == 0


def test_file_changed_after_verification_is_skipped_naming_it(tmp_path, capfd):
    """A file rewritten during a run, to another size or to corrupt bytes of the same size, is
    not decoded: its row is skipped and its path printed, instead of a decode error (or a
    corrupt image) deep in TensorFlow."""
    paths = _folder(tmp_path, n=3)
    table = image_files(paths)
    Image.fromarray(_noise(seed=7)).save(paths[0], quality=20)
    data = bytearray(open(paths[1], "rb").read())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)  # zeros: the same size
    open(paths[1], "wb").write(data)
    decoded = _graph_decode(table)
    assert [bool(ok) for _, ok in decoded] == [False, False, True, True]
    err = capfd.readouterr().err
    for path in paths[:2]:
        assert f"skipped {path} - it changed since it was verified" in err


def test_python_mode_rows_hold_paths_only(tmp_path):
    paths = _folder(tmp_path, n=1)
    table = image_files(paths, "python")
    assert list(table) == ["path"]
    assert not (tmp_path / verify.CACHE_FILES["image"]).exists()
    for path, (image, ok) in zip(paths, _graph_decode(table)):
        assert ok
        np.testing.assert_array_equal(image, read_image(path))


# ------------------------------------------------------------------------------------ label maps


def test_label_maps_keep_their_indices(tmp_path):
    """A palette PNG's indices (not its colours) and a 16-bit map's values, through an 8-bit
    grayscale copy; an 8-bit grayscale map is decoded in place."""
    from mobilevision.data.segmentation import read_label_png
    from mobilevision.data.shapes import voc_colormap

    values = np.random.default_rng(0).integers(0, 21, (10, 14)).astype(np.uint8)
    values[0, :3] = 255
    palette = Image.fromarray(values, "L")
    palette.putpalette(voc_colormap(256).reshape(-1).tolist())
    palette = palette.convert("P") if palette.mode != "P" else palette
    palette.save(tmp_path / "p.png")
    Image.fromarray(values).save(tmp_path / "l.png")
    Image.fromarray(values.astype(np.uint16)).save(tmp_path / "i16.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "p.png").read_bytes()[:60])
    paths = [str(tmp_path / n) for n in ("p.png", "l.png", "i16.png", "cut.png")]
    result = verify.verify_label_maps(paths, quiet=True)
    assert set(result.copied) == {paths[0], paths[2]}
    assert result.skipped[paths[3]].startswith("corrupt label map")
    ds = tf.data.Dataset.from_tensor_slices(result.table()).map(
        lambda row: read_verified(row, graph_decode_label, tf.zeros([1, 1], tf.uint8)))
    out = list(ds.as_numpy_iterator())
    for path, (label, ok) in zip(paths[:3], out):
        assert ok
        np.testing.assert_array_equal(label, read_label_png(path))
        np.testing.assert_array_equal(label, values)
    assert not out[3][1]
