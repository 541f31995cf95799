"""The heads know shapes and strides only: each task builds and trains a step on a stand-in
backbone (a few plain convs with taps at strides 8, 16 and 32) registered like MobileNetV2."""

import keras
import numpy as np
import pytest

import mobilevision as mv
from mobilevision.backbones import BACKBONES, Backbone
from mobilevision.config import ConfigError
from mobilevision.data.shapes import prepare_data
from mobilevision.tasks import TASKS, build_model, training_dataset
from mobilevision.tasks.detection import anchor_generator, feature_maps

CHANNELS = {"c8": 16, "c16": 24, "c32": 32}


def standin_specs(alpha=1.0, output_stride=32):
    if output_stride != 32:
        raise ValueError("the stand-in backbone has no dilated variant")
    return {name: (c, int(name[1:])) for name, c in CHANNELS.items()}


def standin(input_shape, alpha=1.0, output_stride=32, taps=("c32",), bn_momentum=0.99,
            weight_decay=0.0):
    image = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1 / 255.0)(image)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(x)
    outputs = {}
    for name, channels in CHANNELS.items():
        x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="relu",
                                name=name)(x)
        if name in taps:
            outputs[name] = x
    return keras.Model(image, outputs, name="standin")


STANDIN = Backbone(standin, standin_specs,
                   {"classification": ("c32",), "detection": ("c8", "c16", "c32"),
                    "segmentation": ("c16",)},
                   tuple(CHANNELS))
CONFIGS = {"classification": "shapes_classifier.yaml", "detection": "shapes_ssdlite.yaml",
           "segmentation": "shapes_deeplabv3.yaml"}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(BACKBONES, "standin", STANDIN)


@pytest.mark.parametrize("task_name", list(CONFIGS))
def test_each_head_trains_a_step_on_a_standin_backbone(task_name, registered, tmp_path):
    cfg = mv.load_config(CONFIGS[task_name], [
        f"data.root={tmp_path}", "model.backbone.name=standin", "model.backbone.output_stride=32",
        "model.input_size=[64,96]", "data.shapes.num_train=8", "data.shapes.num_val=4",
        "data.shapes.image_size=64", "train.batch_size=4", "model.head.aspp=true",
        "model.head.features=null"])  # the backbone's own taps for the task
    assert cfg.model.head.features == list(STANDIN.head_taps[task_name])
    prepare_data(cfg)
    model = build_model(cfg)
    assert not any(layer.name.startswith(("block_", "Conv1", "out_relu"))
                   for layer in model.layers)  # no MobileNetV2 layer anywhere
    TASKS[task_name].compile(model, cfg, 1)
    images, targets = next(iter(training_dataset(cfg, model)[0]))
    before = [np.array(w) for w in model.trainable_weights]
    logs = model.train_on_batch(images, targets, return_dict=True)
    assert np.isfinite(logs["loss"])
    changed = {w.path for b, w in zip(before, model.trainable_weights)
               if not np.array_equal(b, np.array(w))}
    # The loss reaches the backbone through the head (a box predictor whose map got no matched
    # anchor in this batch has no gradient, so the head is checked by its class predictors).
    for name in STANDIN.head_taps[task_name]:
        assert any(p.endswith(f"{name}/kernel") for p in changed), (name, sorted(changed))
    assert any("predictions" in p or "logits" in p or "ssd_class" in p for p in changed)
    if task_name == "detection":
        # Three taps (strides 8, 16, 32) + four extras: seven maps, anchors from their sizes.
        assert [m["size"] for m in feature_maps(cfg, model)] == [
            [8, 12], [4, 6], [2, 3], [1, 2], [1, 1], [1, 1], [1, 1]]
        assert model.output["boxes"].shape[1] == len(model.decoder.anchors)
        assert anchor_generator(cfg).num_anchors_per_location(7) == [3, 6, 6, 6, 6, 6, 6]


def test_a_tap_the_backbone_lacks_is_a_config_error(registered):
    with pytest.raises(ConfigError, match=r"key 'model.head.features' names 'c64', which backbone "
                                          r"standin does not have; did you mean 'c16'\? its taps "
                                          r"are c8, c16, c32"):
        mv.load_config("shapes_ssdlite.yaml", ["model.backbone.name=standin",
                                               "model.head.features=[c8,c64]"])
