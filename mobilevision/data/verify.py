"""The one-time verification pass that lets training decode images in the graph.

Pillow is the reference decoder (`decode.decode_image_bytes`: it refuses truncated files, applies
EXIF orientation, turns grayscale, palette, RGBA, 16-bit and CMYK into RGB). Before a split is
decoded by TensorFlow ops (`graph_decode.graph_decode_image`), every file is checked once:

- Pillow decodes it; a file it refuses is *skipped*, with Pillow's reason (the same report as
  the Python path gives: `SKIPPED`, then the end-of-epoch report and eval.json);
- the graph decoder decodes the same bytes, EXIF orientation applied as a transpose, and its
  pixels are compared with Pillow's. Equal: the pipeline decodes the file itself. Different, or
  refused by TensorFlow (a palette BMP, a TIFF named .jpg): a lossless PNG copy of Pillow's pixels
  is written once and the pipeline decodes that copy instead. Nothing is assumed about which
  kinds of file TensorFlow gets right; each file is checked.

Label maps (`verify_label_maps`) go the same way, with `segmentation.read_label_png` as the
reference (palette indices, not colours) and `decode_png(channels=1)` as the graph decoder: an
8-bit grayscale map decodes in place, a palette or 16-bit one from an 8-bit grayscale copy.

The results are cached per file, keyed by its path (relative to the folder holding the files),
size and modification time, in `.mobilevision-images.json` / `.mobilevision-labels.json` in that
folder, with the copies in `.mobilevision-decoded/` beside it (hidden names, so the class-folder
and mask-folder listings pass over them). When the folder is not writable, both go to
`$XDG_CACHE_HOME/mobilevision/verified/<hash of the folder>/` (default `~/.cache`). A file whose
size or mtime changed, a new file, or a missing copy is checked again; the rest is not reopened.
The cache is also rebuilt whole when the TensorFlow, Pillow or OpenCV version changes, since the
comparison depends on them. Splits sharing a folder (VOC's JPEGImages) share one cache file.
It is written atomically (temp file, fsync, rename); two processes writing at once lose nothing
but work, which the next run redoes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilevision.data.decode import (
    ImageDecodeError,
    decode_image_bytes,
    exif_orientation,
    read_file_bytes,
)
from mobilevision.data.skips import SKIPPED

CACHE_VERSION = 1
CACHE_FILES = {"image": ".mobilevision-images.json", "label": ".mobilevision-labels.json"}
COPY_FOLDER = ".mobilevision-decoded"


@dataclass
class Verified:
    """The verification of a list of files, in its order.

    paths: the files as given; entries: one dict per file ({"ok", "reason", "orientation",
    "copy", "nbytes", ...}); cache_dir: where the cache file and the copies are; checked: how many
    files were opened this time (0 when the cache held them all); seconds: the time it took.
    """

    kind: str
    paths: list
    entries: list
    cache_dir: Path
    checked: int
    seconds: float

    @property
    def skipped(self) -> dict:
        """path -> why it cannot be decoded (Pillow's reason)."""
        return {p: e["reason"] for p, e in zip(self.paths, self.entries) if not e["ok"]}

    @property
    def copied(self) -> dict:
        """path -> why the graph decodes a copy of it instead of the file itself."""
        return {p: e["why"] for p, e in zip(self.paths, self.entries) if e["ok"] and e["copy"]}

    def source(self, i: int) -> str:
        """The file the graph reads for file i: the file itself or its copy."""
        copy = self.entries[i]["copy"]
        return str(self.cache_dir / COPY_FOLDER / copy) if copy else self.paths[i]

    def table(self) -> dict:
        """Columns for `from_tensor_slices` (see `pipeline.image_files`): path, source,
        orientation int32, nbytes and fingerprint int64 (the source's size and content
        fingerprint), ok bool; each (N,)."""
        n = len(self.paths)
        return {"path": np.asarray(self.paths, dtype=str) if n else np.zeros(0, str),
                "source": np.asarray([self.source(i) for i in range(n)], dtype=str) if n
                else np.zeros(0, str),
                "orientation": np.asarray([e["orientation"] for e in self.entries], np.int32),
                "nbytes": np.asarray([e["nbytes"] for e in self.entries], np.int64),
                "fingerprint": np.asarray([e["fingerprint"] for e in self.entries], np.int64),
                "ok": np.asarray([e["ok"] for e in self.entries], bool)}


def verify_images(paths, workers: int | None = None, quiet: bool = False) -> Verified:
    """Verify image files for graph decoding (see the module docstring); cached.

    Args:
      paths: image file paths.
      workers: threads for the files not in the cache (default: the CPU cores this process may
        use). Pillow and TensorFlow decode outside the GIL.
      quiet: print nothing (a line is printed when any file had to be opened).
    Returns:
      Verified, with every unreadable file also recorded in SKIPPED (path -> reason).
    """
    return _verify("image", paths, workers, quiet)


def verify_label_maps(paths, workers: int | None = None, quiet: bool = False) -> Verified:
    """Verify label-map PNGs (class indices) for graph decoding; as `verify_images`. A map that
    cannot be decoded is skipped with the reason `read_label_png` gives."""
    return _verify("label", paths, workers, quiet)


# The pass ---------------------------------------------------------------------------------------


def _verify(kind, paths, workers, quiet) -> Verified:
    t0 = time.perf_counter()
    paths = [os.fspath(p) for p in paths]
    if not paths:
        return Verified(kind, [], [], Path("."), 0, 0.0)
    absolute = [os.path.abspath(p) for p in paths]
    root = Path(os.path.commonpath([os.path.dirname(p) for p in absolute]))
    cache_dir = root if os.access(root, os.W_OK) else _user_cache_dir(root)
    cache_file = cache_dir / CACHE_FILES[kind]
    cached = _load(cache_file, kind)
    rel = [os.path.relpath(p, root) for p in absolute]

    entries, todo = [None] * len(paths), []
    for i, (path, key) in enumerate(zip(absolute, rel)):
        try:
            st = os.stat(path)
        except OSError:
            todo.append(i)  # missing or unreadable: checked again (cheaply) every time
            continue
        e = cached.get(key)
        if e is not None and e["size"] == st.st_size and e["mtime_ns"] == st.st_mtime_ns \
                and _copy_intact(cache_dir, e):
            entries[i] = e
        else:
            todo.append(i)

    if todo:
        if not quiet:
            print(f"verifying {len(todo)} of {len(paths)} {kind} files for decoding in the graph "
                  f"(once; cached in {cache_file}) ...", flush=True)
        done = _check(kind, [paths[i] for i in todo], [rel[i] for i in todo], cache_dir,
                      workers or _cpu_count())
        for i, e in zip(todo, done):
            entries[i] = e
        # Keep the entries of files other lists (other splits) hold, while those files exist.
        listed = set(rel)
        files = {k: e for k, e in cached.items()
                 if k not in listed and os.path.exists(root / k)}
        for key, e in zip(rel, entries):
            if "size" in e:  # a file that could be stat'ed; a missing one is not cached
                files[key] = e
        for k, old in cached.items():  # copies no entry uses any more
            if old.get("copy") and old["copy"] != files.get(k, {}).get("copy"):
                _remove_copy(cache_dir, old)
        if any(e.get("copy") for e in done):
            os.sync()  # the copies on disk before the cache that trusts them (one sync for all)
        _save(cache_file, kind, files)

    seconds = time.perf_counter() - t0
    result = Verified(kind, paths, entries, cache_dir, len(todo), seconds)
    for path, reason in result.skipped.items():
        SKIPPED.add(path, reason)
    if todo and not quiet:
        ok = sum(e["ok"] for e in entries)
        print(f"verified {len(todo)} {kind} files in {seconds:.1f} s: {ok - len(result.copied)} "
              f"decode in the graph, {len(result.copied)} from a lossless copy, "
              f"{len(paths) - ok} skipped as unreadable", flush=True)
    return result


# Files are read and decoded by Pillow in worker threads, a window of them at a time, while the
# calling thread runs the graph decoder over the window before: one graph call per window, since
# a call per file cost more than Pillow's decode (0.6 against 0.2 ms for a small JPEG, nearly all
# of it Python holding the GIL, so threads did not share it). A window holds about _WINDOW_VALUES
# decoded bytes (at most _WINDOW_FILES files), whatever the image size.
_WINDOW_FILES = 64
_WINDOW_VALUES = 32 * 2**20


@dataclass
class _Read:
    """A file Pillow decoded: what the graph decoder is compared with."""

    st: os.stat_result
    data: bytes
    reference: np.ndarray  # Pillow's pixels (h, w, 3), or a label map's values (h, w)
    orientation: int  # the EXIF orientation the graph applies (1 for a label map: not applied)
    describe: str  # what the file is, for the reason a copy is made ("JPEG RGB: ...")


def _check(kind, paths, keys, cache_dir, workers) -> list:
    """Verify `paths` (keys: their cache keys) -> one cache entry each, in order."""
    read = _read_image if kind == "image" else _read_label
    batch = _batch_decoder(kind)  # traced before the threads
    entries, pending, start, size = [], deque(), 0, 4  # grows once a window shows the sizes
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
        while start < len(paths) or pending:
            while start < len(paths) and len(pending) < 2:  # the window in hand and the next
                window = range(start, min(start + size, len(paths)))
                pending.append((window, [pool.submit(read, paths[i]) for i in window]))
                start = window.stop
            window, futures = pending.popleft()
            reads = [f.result() for f in futures]
            entries += _compare_window(reads, [keys[i] for i in window], cache_dir, batch, pool)
            values = sum(r.reference.size for r in reads if isinstance(r, _Read))
            size = int(np.clip(_WINDOW_VALUES * len(reads) // max(values, 1), 1, _WINDOW_FILES))
    return entries


def _compare_window(reads, keys, cache_dir, batch, pool) -> list:
    """Pillow's reads (a `_Read`, or the entry of a file it refused) -> cache entries, the
    graph decoder run once over the window. When TensorFlow refuses any of its files, each file
    is decoded on its own, so that the refused one gets its own reason."""
    import tensorflow as tf

    todo = [i for i, r in enumerate(reads) if isinstance(r, _Read)]
    try:
        decoded = batch([reads[i].data for i in todo], [reads[i].orientation for i in todo])
    except (tf.errors.OpError, ValueError):
        decoded = [None] * len(todo)
    entries, copies = list(reads), []
    for i, got in zip(todo, decoded):
        r = reads[i]
        if got is None:
            why, fingerprint = _graph_difference(batch, r.data, r.reference, r.orientation)
        else:
            why, fingerprint = _difference(*got, r.reference)
        entry = _entry(r.st, r.orientation, r.data, fingerprint)
        if why is not None:
            copies.append((keys[i], r.reference, entry, r.describe + why))
        entries[i] = entry
    _write_copies(copies, cache_dir, batch, pool)
    return entries


def _read_image(path):
    """Pillow's decode of one image file -> `_Read`, or the skip entry of a file it refuses.
    Never raises for a bad file."""
    from PIL import Image

    st = _stat(path)  # before reading: a change after this shows as a new mtime next run
    try:
        data = read_file_bytes(path)  # a missing file: read_image's reason, "file not found"
        pixels = decode_image_bytes(data, path=path)
    except ImageDecodeError as e:
        return _skip(e.reason, st)
    if st is None:  # pragma: no cover - appeared between the two calls
        return _skip("file changed while it was verified", None)
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = exif_orientation(image)
            fmt, mode = image.format, image.mode
    except Exception:  # read by the OpenCV fallback, which applies the orientation itself
        orientation, fmt, mode = 1, "image", "Pillow cannot open"
    return _Read(st, data, pixels, orientation, f"{fmt} {mode}: ")


def _read_label(path):
    """One label-map PNG's values (class indices, not colours) -> `_Read`, or a skip entry."""
    from mobilevision.data.image_folder import DatasetError
    from mobilevision.data.segmentation import read_label_png

    st = _stat(path)
    try:
        data = read_file_bytes(path)
        values = read_label_png(path)
    except ImageDecodeError as e:
        return _skip(e.reason, st)
    except DatasetError as e:
        return _skip(str(e), st)
    if st is None:  # pragma: no cover - appeared between the two calls
        return _skip("file changed while it was verified", None)
    return _Read(st, data, values, 1, "")


def _graph_difference(batch, data, reference, orientation) -> tuple[str | None, int | None]:
    """One file through the batch decoder -> (why, fingerprint): why is None when the graph
    decoder gives `reference` exactly for `data`, else what differs; fingerprint is `data`'s (from
    the same graph call), or None when TensorFlow could not decode it."""
    import tensorflow as tf

    try:
        [(got, fingerprint)] = batch([data], [orientation])
    except (tf.errors.OpError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"TensorFlow cannot decode it ({message[:120]})", None
    return _difference(got, fingerprint, reference)


def _difference(got, fingerprint, reference) -> tuple[str | None, int]:
    """The graph decoder's pixels against the reference -> (why they differ, or None;
    fingerprint)."""
    if got.shape != reference.shape:
        return f"TensorFlow decodes it {got.shape}, Pillow {reference.shape}", fingerprint
    if got.tobytes() != reference.tobytes():  # a byte compare: 10x faster than array_equal
        diff = np.abs(got.astype(np.int16) - reference.astype(np.int16))
        return (f"TensorFlow's pixels differ from Pillow's (max {int(diff.max())} levels, "
                f"{np.mean(diff > 0):.0%} of values)"), fingerprint
    return None, fingerprint


def _write_copies(copies, cache_dir, batch, pool) -> None:
    """copies: [(key, reference pixels ((h, w, 3) RGB or (h, w) indices, uint8), entry, why)].
    Write each as a lossless PNG the graph decodes exactly (checked, one graph call for all),
    and record it in its entry. PNG encoding and the writes run in `pool`."""
    import tensorflow as tf

    from mobilevision.utils import atomic_write_bytes

    if not copies:
        return
    datas = list(pool.map(lambda copy: _png(copy[1]), copies))
    try:
        decoded = batch(datas, [1] * len(datas))
    except (tf.errors.OpError, ValueError) as e:  # pragma: no cover - a TF bug
        raise RuntimeError(f"TensorFlow cannot decode the PNG copies it wrote ({e})") from None
    names = []
    for (key, pixels, entry, why), data, (got, fingerprint) in zip(copies, datas, decoded):
        if _difference(got, fingerprint, pixels)[0] is not None:  # pragma: no cover - a TF bug
            raise RuntimeError(f"{key}: TensorFlow does not decode its PNG copy exactly")
        names.append(hashlib.sha1(key.encode("utf-8")).hexdigest()[:20] + ".png")
        entry.update(copy=names[-1], nbytes=len(data), fingerprint=fingerprint, why=why,
                     orientation=1)
    # Without an fsync each: `_verify` syncs once, before the cache file that lists them is saved.
    list(pool.map(lambda name, data: atomic_write_bytes(Path(cache_dir) / COPY_FOLDER / name,
                                                        data, sync=False), names, datas))


def _png(pixels) -> bytes:
    """(h, w, 3) RGB or (h, w) values, uint8 -> lossless 8-bit PNG bytes (RGB or L)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _stat(path):
    try:
        return os.stat(path)
    except OSError:
        return None


_ENTRY_FIELDS = {"size", "mtime_ns", "ok", "reason", "orientation", "copy", "why", "nbytes",
                 "fingerprint"}


def _entry(st, orientation, data, fingerprint=None) -> dict:
    """A verified file's cache entry; `fingerprint`: the data's, when the decoding graph already
    computed it."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ok": True, "reason": None,
            "orientation": int(orientation), "copy": None, "why": None, "nbytes": len(data),
            "fingerprint": _fingerprint_of(data) if fingerprint is None else fingerprint}


def _fingerprint_of(data: bytes) -> int:
    """The pipeline's `content_fingerprint` of `data`, as a Python int."""
    from mobilevision.data.graph_decode import content_fingerprint

    return int(content_fingerprint(data))


def _skip(reason, st) -> dict:
    entry = {"ok": False, "reason": reason, "orientation": 1, "copy": None, "why": None,
             "nbytes": 0, "fingerprint": 0}
    if st is not None:
        entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    return entry


# The graph decoder, called eagerly on lists of files ---------------------------------------------

_decoders = {}
_decoders_lock = threading.Lock()


def _batch_decoder(kind):
    """([bytes], [orientation]) -> [(decoded array, fingerprint)]: the pipeline's own decode
    function (`graph_decode_image` / `graph_decode_label`) and fingerprint, run over a list of
    files in one call (a while loop in one graph, traced once per process). Raises TensorFlow's
    error when any file cannot be decoded."""
    import tensorflow as tf

    from mobilevision.data.graph_decode import (content_fingerprint, graph_decode_image,
                                                graph_decode_label)

    def decode_all(data, orientation):
        n = tf.shape(data)[0]

        def body(i, values, shapes):
            x = graph_decode_image(data[i], orientation[i]) if kind == "image" \
                else graph_decode_label(data[i])
            shape = tf.shape(x) * 1  # a plain int32 tensor: a TensorArray warns on a shape
            return i + 1, values.write(i, tf.reshape(x, [-1])), shapes.write(i, shape)

        _, values, shapes = tf.while_loop(
            lambda i, *_: i < n, body,
            [0, tf.TensorArray(tf.uint8, n, infer_shape=False),
             tf.TensorArray(tf.int32, n, element_shape=[3 if kind == "image" else 2])])
        return values.concat(), shapes.stack(), content_fingerprint(data)

    with _decoders_lock:
        if kind not in _decoders:
            _decoders[kind] = tf.function(decode_all, autograph=False, input_signature=[
                tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32)])
    fn = _decoders[kind]

    def run(datas, orientations):
        if not datas:
            return []
        values, shapes, fingerprints = fn(tf.constant(datas, tf.string),
                                          tf.constant(orientations, tf.int32))
        values, shapes = values.numpy(), shapes.numpy()
        ends = np.cumsum(np.prod(shapes, axis=1))
        return [(values[end - np.prod(shape):end].reshape(shape), int(fingerprint))
                for shape, end, fingerprint in zip(shapes, ends, fingerprints.numpy())]

    return run


# The cache file ---------------------------------------------------------------------------------


def _fingerprint(kind) -> dict:
    """What the cached comparisons depend on; another value rebuilds the whole cache."""
    import cv2
    import PIL
    import tensorflow as tf

    from mobilevision.data.graph_decode import JPEG_DCT_METHOD

    return {"version": CACHE_VERSION, "kind": kind, "tensorflow": tf.__version__,
            "pillow": PIL.__version__, "opencv": cv2.__version__,
            "jpeg_dct_method": JPEG_DCT_METHOD}


def _load(cache_file: Path, kind) -> dict:
    """{relative path: entry} from the cache file; {} when it is missing, unreadable, or made by
    other decoders."""
    try:
        data = json.loads(cache_file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        print(f"warning: {cache_file}: unreadable verification cache ({e}); verifying again",
              file=sys.stderr)
        return {}
    if not isinstance(data, dict) or data.get("fingerprint") != _fingerprint(kind) \
            or not isinstance(data.get("files"), dict):
        return {}
    # An entry without every field (a hand-edited file) is checked again, not trusted.
    return {k: e for k, e in data["files"].items()
            if isinstance(e, dict) and _ENTRY_FIELDS <= set(e)}


def _save(cache_file: Path, kind, files: dict) -> None:
    from mobilevision.utils import atomic_write_text

    text = json.dumps({"fingerprint": _fingerprint(kind), "files": files}, separators=(",", ":"))
    try:
        atomic_write_text(cache_file, text + "\n")
    except OSError as e:  # the results still hold for this run; the next one verifies again
        print(f"warning: cannot write the verification cache {cache_file} ({e})", file=sys.stderr)


def _copy_intact(cache_dir, entry) -> bool:
    if not entry.get("copy"):
        return True
    try:
        return os.stat(Path(cache_dir) / COPY_FOLDER / entry["copy"]).st_size == entry["nbytes"]
    except OSError:
        return False


def _remove_copy(cache_dir, entry) -> None:
    if entry.get("copy"):
        try:
            os.unlink(Path(cache_dir) / COPY_FOLDER / entry["copy"])
        except OSError:
            pass


def _user_cache_dir(root: Path) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha1(str(root).encode("utf-8")).hexdigest()[:16]
    return Path(base) / "mobilevision" / "verified" / digest


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
