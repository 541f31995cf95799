"""Shared fixtures: small synthetic datasets written in real formats, made once per session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


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
