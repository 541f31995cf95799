"""`model.backbone.weights: imagenet`: Keras' file names and URLs, the real download
(`keras.utils.get_file`) from an HTTP server this test starts on 127.0.0.1
(MOBILEVISION_WEIGHTS_URL points at it), the check, Keras' cache in a temporary KERAS_HOME, and
the config errors.

The served file is a keras.applications MobileNetV2 (alpha 0.35, 96 px, no top) with random
values in every variable, BatchNorm statistics included, written in the legacy HDF5 layout of
Keras' published files, which keras.applications' own loader is shown to read.
"""

import hashlib
import http.server
import os
import socket
import threading

import h5py
import numpy as np
import pytest

import keras
from keras.src.legacy.saving import legacy_h5_format

from mobilevision.backbones import imagenet
from mobilevision.backbones.imagenet import (ENV_URL, fetch_imagenet_weights, imagenet_file,
                                             load_backbone_weights)
from mobilevision.backbones.mobilenet_v2 import IMAGENET_BASE_URL, mobilenet_v2
from mobilevision.backbones.weights import WeightsFileError, WeightsMismatchError
from mobilevision.config import SCHEMA, ConfigError, Field, load_config

ALPHA = 0.35
SHAPE = (96, 96, 3)
NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
NAME_224 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def _legacy_h5(model, path):
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path.read_bytes()


@pytest.fixture(scope="module")
def source():
    model = keras.applications.MobileNetV2(weights=None, include_top=False, alpha=ALPHA,
                                           input_shape=SHAPE)
    rng = np.random.default_rng(0)
    for v in model.weights:
        low = 0.5 if "moving_variance" in v.path else -1.0
        v.assign(rng.uniform(low, 1.0, tuple(v.shape)).astype("float32"))
    return model


@pytest.fixture(scope="module")
def files(source, tmp_path_factory):
    """{kind: bytes} of the files the server hands out."""
    d = tmp_path_factory.mktemp("served")
    good = _legacy_h5(source, d / NAME)
    # The layout is the one keras.applications reads: its own loader takes the file.
    again = keras.applications.MobileNetV2(weights=str(d / NAME), include_top=False, alpha=ALPHA,
                                           input_shape=SHAPE)
    for a, b in zip(source.weights, again.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    v1 = keras.applications.MobileNet(weights=None, include_top=False, alpha=0.25,
                                      input_shape=SHAPE)
    wider = keras.applications.MobileNetV2(weights=None, include_top=False, alpha=0.5,
                                           input_shape=SHAPE)
    return {"good": good, "other": _legacy_h5(v1, d / "mobilenet_v1.h5"),
            "wider": _legacy_h5(wider, d / "mobilenet_v2_0.5.h5")}


class _Server:
    """An HTTP server on 127.0.0.1 in a thread. URL folders: /good/ serves the file for every
    name, /short/ announces the whole file and sends half (a dropped connection), /cut/ sends
    half a file as if it were whole, /other/ serves a MobileNetV1 file, /wider/ a MobileNetV2 of
    alpha 0.5, anything else is a 404."""

    def __init__(self, files):
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                folder = self.path.strip("/").split("/")[0]
                body = {"good": files["good"], "short": files["good"],
                        "cut": files["good"][: len(files["good"]) // 2],
                        "other": files["other"], "wider": files["wider"]}.get(folder)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if folder == "short" else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, folder):
        return f"http://127.0.0.1:{self.port}/{folder}/"

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def server(files):
    s = _Server(files)
    yield s
    s.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh KERAS_HOME; returns its models/ folder."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras" / "models"


def _backbone():
    return mobilenet_v2(SHAPE, alpha=ALPHA, taps=("out_relu",))


def _assert_equal_by_name(source, model):
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    assert set(ours) == set(theirs) and len(ours) == 104
    for name, layer in ours.items():
        for a, b in zip(layer.get_weights(), theirs[name].get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_file_names_and_urls_are_keras_own(monkeypatch):
    from keras.src.applications import mobilenet_v2 as keras_mnv2

    assert IMAGENET_BASE_URL == keras_mnv2.BASE_WEIGHT_PATH
    assert imagenet_file("mobilenet_v2", 0.35, (96, 96)) == (NAME, None)
    assert imagenet_file("mobilenet_v2", 1.0, [224, 224])[0] == (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    assert imagenet_file("mobilenet_v2", 0.5, (160, 160))[0].endswith("_0.5_160_no_top.h5")
    # Sizes without a file of their own take the 224 file, with a note saying so.
    for alpha, size in [(0.75, (320, 320)), (1.0, (96, 128)), (1.4, (96, 96)), (1.3, (192, 192))]:
        name, note = imagenet_file("mobilenet_v2", alpha, size)
        assert name == f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5"
        assert f"{size[0]}x{size[1]}" in note and "using the 224 px file" in note
    with pytest.raises(ValueError, match=r"publishes MobileNetV2 ImageNet weights for alpha "
                                         r"0\.35, 0\.5, 0\.75, 1, 1\.3, 1\.4, not 0\.25"):
        imagenet_file("mobilenet_v2", 0.25, (224, 224))
    monkeypatch.delenv(ENV_URL, raising=False)
    assert imagenet.imagenet_url("mobilenet_v2", NAME) == keras_mnv2.BASE_WEIGHT_PATH + NAME
    monkeypatch.setenv(ENV_URL, "http://mirror.example/weights")
    assert imagenet.imagenet_url("mobilenet_v2", NAME) == f"http://mirror.example/weights/{NAME}"


def test_downloads_once_checks_caches_and_loads_by_name(server, cache, source, files,
                                                        monkeypatch):
    monkeypatch.setenv(ENV_URL, server.url("good"))
    model = _backbone()
    report = load_backbone_weights(model, "imagenet", alpha=ALPHA)
    _assert_equal_by_name(source, model)
    assert server.requests == [f"/good/{NAME}"]
    assert sorted(os.listdir(cache)) == [NAME]  # the checked file under Keras' name, nothing else
    assert (cache / NAME).read_bytes() == files["good"]
    assert report.path == str(cache / NAME) and report.source == server.url("good") + NAME
    assert report.sha256 == hashlib.sha256(files["good"]).hexdigest()
    assert report.missing == report.mismatched == report.unused == [] and report.note is None
    assert report.describe().splitlines()[1:] == [
        f"  source: {server.url('good')}{NAME} (sha256 {report.sha256})",
        "  loaded  the model: 104 of 104 layers"]
    # Offline: the cached file is used without contacting anything (the server is gone).
    server.stop()
    again = _backbone()
    fetched = fetch_imagenet_weights("mobilenet_v2", ALPHA, (96, 96))
    assert not fetched.downloaded and fetched.path == str(cache / NAME)
    load_backbone_weights(again, "imagenet", alpha=ALPHA)
    _assert_equal_by_name(source, again)
    assert server.requests == [f"/good/{NAME}"]


def test_other_sizes_use_the_224_file_with_a_note(server, cache, source, monkeypatch, capfd):
    monkeypatch.setenv(ENV_URL, server.url("good"))
    model = mobilenet_v2((128, 96, 3), alpha=ALPHA, taps=("block_16_project",))
    report = load_backbone_weights(model, "imagenet", alpha=ALPHA)
    assert server.requests == [f"/good/{NAME_224}"]
    assert "note: no ImageNet weights trained at 128x96" in capfd.readouterr().err
    assert "using the 224 px file" in report.note and f"note: {report.note}" in report.describe()
    # A backbone that stops at its tap: the file's later layers are unused, the rest loaded.
    assert report.unused == ["block_16_project_BN", "Conv_1", "Conv_1_bn"]
    for layer in model.layers:
        if layer.weights:
            for a, b in zip(layer.get_weights(), source.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("folder, message", [
    ("short", r"could not download ImageNet weights: URL fetch failure on http://127\.0\.0\.1:\d+"
              r"/short/.*retrieval incomplete"),
    ("cut", r"the file downloaded from http://127\.0\.0\.1:\d+/cut/\S+ is not mobilenet_v2 alpha "
            r"0\.35's ImageNet weights \(the file could not be opened as HDF5"),
    ("other", r"is not mobilenet_v2 alpha 0\.35's ImageNet weights \(104 layer\(s\) missing, "
              r"e\.g\. Conv1; 54 layer\(s\) of another model, e\.g\. conv1\); nothing was kept; "),
    ("wider", r"is not mobilenet_v2 alpha 0\.35's ImageNet weights \(\d+ layer\(s\) of other "
              r"shapes, e\.g\. block_1_project \(1, 1, 48, 16\) instead of \(1, 1, 48, 8\)\)"),
    ("missing", r"could not download ImageNet weights: URL fetch failure on \S+: 404 -- Not Found"),
], ids=["dropped_connection", "half_a_file", "another_model", "another_width", "not_found"])
def test_a_bad_download_is_one_line_and_leaves_nothing(folder, message, server, cache,
                                                       monkeypatch):
    monkeypatch.setenv(ENV_URL, server.url(folder))
    model = _backbone()
    before = [w.numpy() for w in model.weights]
    with pytest.raises(WeightsFileError, match=message) as info:
        load_backbone_weights(model, "imagenet", alpha=ALPHA)
    text = str(info.value)
    assert "\n" not in text
    assert text.endswith(f"download {server.url(folder)}{NAME} by hand and put it at "
                         f"{cache / NAME} (or set {ENV_URL} to a folder URL that serves it)")
    assert server.requests == [f"/{folder}/{NAME}"]
    assert os.listdir(cache) == []  # nothing half-written, nothing wrong kept
    for w, x in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), x)


def test_no_server(cache, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(ENV_URL, f"http://127.0.0.1:{port}/")
    with pytest.raises(WeightsFileError, match=r"could not download ImageNet weights: URL fetch "
                                               r"failure on .*Connection refused.* by hand and put "
                                               r"it at "):
        fetch_imagenet_weights("mobilenet_v2", ALPHA, (96, 96))
    assert os.listdir(cache) == []


def test_a_wrong_file_in_the_cache_is_named_not_deleted(cache, files, monkeypatch):
    monkeypatch.setenv(ENV_URL, "http://127.0.0.1:9/")  # never contacted: the file is cached
    cache.mkdir(parents=True)
    (cache / NAME).write_bytes(files["other"])
    with pytest.raises(WeightsFileError, match=rf"cached ImageNet weights {cache / NAME} do not "
                                               rf"fit backbone 'mobilenet_v2' .*delete the file to "
                                               rf"download it again from http://127\.0\.0\.1:9/"):
        load_backbone_weights(_backbone(), "imagenet", alpha=ALPHA)
    assert (cache / NAME).read_bytes() == files["other"]


def test_a_named_file_still_loads_and_a_wrong_one_is_a_mismatch(files, source, tmp_path):
    path = tmp_path / "mine.h5"
    path.write_bytes(files["good"])
    model = _backbone()
    report = load_backbone_weights(model, str(path), alpha=ALPHA)
    assert report.source is None and report.sha256 is None
    _assert_equal_by_name(source, model)
    path.write_bytes(files["other"])
    with pytest.raises(WeightsMismatchError, match="not in the file"):
        load_backbone_weights(_backbone(), str(path), alpha=ALPHA)


def test_config_accepts_imagenet_without_downloading_and_refuses_what_keras_lacks(monkeypatch):
    monkeypatch.setenv(ENV_URL, "http://127.0.0.1:9/")  # nothing listens; nothing may call it
    cfg = load_config("shapes_ssdlite.yaml", ["model.backbone.weights=imagenet"])
    assert cfg.model.backbone.weights == "imagenet"
    typo = (r"override 'model\.backbone\.weights=imagnet': key 'model\.backbone\.weights' names "
            r"'imagnet', which is not a file; expected 'imagenet' or a weights file; did you "
            r"mean 'imagenet'\?")
    with pytest.raises(ConfigError, match=typo):
        load_config("shapes_ssdlite.yaml", ["model.backbone.weights=imagnet"])
    with pytest.raises(ConfigError, match=r"key 'model\.weights' names 'imagenet', which is not a "
                                          r"file; .*did you mean 'model\.backbone\.weights'\?"):
        load_config("shapes_ssdlite.yaml", ["model.weights=imagenet"])
    # Every width the config accepts has published weights; one it does not is refused by the
    # width key already, and were the backbone to take more widths, by the weights key.
    with pytest.raises(ConfigError, match=r"key 'model\.backbone\.alpha' must be one of"):
        load_config("shapes_ssdlite.yaml", ["model.backbone.alpha=0.25",
                                            "model.backbone.weights=imagenet"])
    field = SCHEMA["model.backbone.alpha"]
    monkeypatch.setitem(SCHEMA, "model.backbone.alpha",
                        Field(field.default, field.kind, field.choices + (0.25,)))
    with pytest.raises(ConfigError, match=r"^override 'model\.backbone\.weights=imagenet': key "
                                          r"'model\.backbone\.weights' is 'imagenet', but "
                                          r"keras\.applications publishes MobileNetV2 ImageNet "
                                          r"weights for alpha 0\.35, 0\.5, 0\.75, 1, 1\.3, 1\.4, "
                                          r"not 0\.25; set model\.backbone\.alpha to one of "
                                          r"those"):
        load_config("shapes_ssdlite.yaml", ["model.backbone.alpha=0.25",
                                            "model.backbone.weights=imagenet"])
