"""Shared fixtures: small synthetic datasets written in real formats, made once per session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


# The test files that take longest (seconds of one worker, the whole suite on 2 cores, measured
# 2026-12-04 on the 2-core Zen 4), run first: two workers then finish together instead of one
# running a long file alone at the end. (pytest.ini's --no-loadscope-reorder keeps this order;
# xdist's own reorder puts the files with the most tests first, and these have few.) The suite
# took 11:12 and 12:58 in this order, 11:45 in strict longest-first order: the same, within
# the VM's noise.
LONGEST_FIRST = ["tasks/test_output_stride.py",    # 134 s
                 "export/test_export.py",          # 142
                 "test_demo.py",                   # 308
                 "tasks/test_distribute.py",       # 194
                 "tasks/test_trainer.py",          # 91
                 "export/test_web.py",             # 105
                 "test_api.py",                    # 49
                 "backbones/test_mobilenet_v2.py"]  # 36; every other file under 42


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item):
        path = item.path.relative_to(config.rootpath / "tests").as_posix()
        return rank.get(path, len(rank))

    items.sort(key=key)  # stable: the rest keep their collection order


SHAPES_PARAMS = {"num_train": 40, "num_val": 15, "image_size": 64, "seed": 0}


@pytest.fixture(scope="session")
def shapes_folders(tmp_path_factory):
    """A small class-folder dataset: root/{train,val}/<class>/*.jpg|png (5 classes, 64 px)."""
    from mobilevision.data.shapes import ensure_shapes

    root = tmp_path_factory.mktemp("shapes_cls")
    ensure_shapes(root, "classification", **SHAPES_PARAMS)
    return root


def _tiny_overrides(root, **extra):
    values = {"data.root": str(root), "model.input_size": "[64,64]", "train.batch_size": 8,
              "train.epochs": 2, "train.verbose": "2", "data.shuffle_buffer": 64}
    # The same generator parameters as `shapes_folders`, so `data.synthetic: shapes` finds the
    # data already there instead of generating the config's full-size set over it.
    values.update({f"data.shapes.{k}": v for k, v in SHAPES_PARAMS.items()})
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def tiny_overrides():
    """tiny_overrides(root, **{key: value}) -> overrides that make shapes_classifier.yaml small
    enough for a unit test (64 px, batch 8, 2 epochs) on the data at `root`."""
    return _tiny_overrides


def _batchnorms(model) -> list:
    """Every BatchNormalization layer of `model`, inside nested models (the backbone) too."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found += _batchnorms(layer)
    return found


def _randomize_batchnorm(model, image_shape, seed: int) -> None:
    """Random BatchNorm scales and offsets, and moving statistics measured on random images, so
    no BatchNorm is the identity (a dropped or wrongly folded one changes the outputs) and the
    activations keep their scale through the depth, as in a trained model. (With the initial
    statistics two images' outputs agree to 1e-7 and an export test would prove nothing.)
    Variances are floored at 0.01: half the channels are near-dead at initialization, and
    dividing them by ~0.03 would amplify float32 rounding 30 times, to near the tolerances."""
    import numpy as np

    rng = np.random.default_rng(seed)
    layers = _batchnorms(model)
    assert layers, "no BatchNorm layers found"
    momentum = {}
    for layer in layers:
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                           mean, var])
        momentum[layer], layer.momentum = layer.momentum, 0.0  # moving stats := the batch's
    model(rng.uniform(0, 255, (4, *image_shape)).astype(np.float32), training=True)
    for layer in layers:
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([gamma, beta, mean, np.maximum(var, 0.01)])
        layer.momentum = momentum[layer]


@pytest.fixture(scope="session")
def randomize_batchnorm():
    """randomize_batchnorm(model, (H, W, 3), seed): give `model` random, non-identity BatchNorm
    parameters and statistics (for export parity tests)."""
    return _randomize_batchnorm


def _png_size(path, min_side=100, max_side=3000, max_bytes=1 << 20):
    """(width, height) of the PNG at `path`, checked: a PNG Pillow opens and fully decodes, each
    side within [min_side, max_side] and the file at most max_bytes."""
    from PIL import Image

    from pathlib import Path

    path = Path(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size <= max_bytes, (path, path.stat().st_size)
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        width, height = image.size
    assert min_side <= width <= max_side and min_side <= height <= max_side, (path, image.size)
    return width, height


@pytest.fixture(scope="session")
def png_size():
    """png_size(path, min_side=100, max_side=3000, max_bytes=1 MiB) -> (width, height) of a PNG
    checked to decode and to be of a sensible size."""
    return _png_size


class OpenedFiles:
    """The files opened in some folders, in the order they were opened, by any process (Linux
    inotify IN_OPEN events): what a pipeline read, whichever code decodes it, and without
    strace. Use as a context manager; `take()` returns the files opened since the last call.
    (inotify merges an event into an identical one not yet read, so a file opened twice in a
    row may appear once.)"""

    IN_OPEN, IN_ISDIR, IN_Q_OVERFLOW = 0x20, 0x40000000, 0x4000

    def __init__(self, folders):
        import ctypes
        import sys
        from pathlib import Path

        if not sys.platform.startswith("linux"):
            pytest.skip("counting opened files needs Linux inotify")
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.folders = {}
        for folder in folders:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(folder), self.IN_OPEN)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
            self.folders[wd] = Path(folder)

    def take(self) -> list:
        """[Path] of the files opened since the watch began or the last take(), in order."""
        import struct

        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        opened, offset = [], 0
        while offset < len(data):
            wd, mask, _, size = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16: offset + 16 + size].rstrip(b"\0")
            offset += 16 + size
            assert not mask & self.IN_Q_OVERFLOW, "inotify queue overflowed: events were lost"
            if name and not mask & self.IN_ISDIR:  # the folder itself being listed: not a file
                opened.append(self.folders[wd] / os.fsdecode(name))
        return opened

    def close(self):
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture(scope="session")
def opened_files():
    """opened_files(folders) -> an `OpenedFiles` watch on those folders (a context manager)."""
    return OpenedFiles
