"""`FreezeBackbone`: the backbone (BatchNorm statistics included) does not change during the frozen
epochs of one `model.fit` and does after; the head trains throughout; a resumed run past the
frozen epochs starts unfrozen; an optimizer built without the backbone is refused."""

import numpy as np
import pytest

import keras

import mobilevision as mv
from mobilevision.freeze import FreezeBackbone

SIZE = 32


def _classifier():
    cfg = mv.load_config("shapes_classifier.yaml", [
        f"model.input_size=[{SIZE},{SIZE}]", "model.backbone.alpha=0.35", "model.num_classes=3",
        "model.head.dropout=0.0"])
    return mv.build_model(cfg)


def _compile(model):
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy")


def _data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, 3, 8)
    return x, y


class _Snapshots(keras.callbacks.Callback):
    """Every variable of the backbone and of the head at the start and after each epoch."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.at = []

    def _take(self):
        ours = {id(v) for v in self.backbone.weights}
        head = [v for v in self.model.weights if id(v) not in ours]
        self.at.append(([np.array(v.numpy()) for v in self.backbone.weights],
                        [np.array(v.numpy()) for v in head]))

    def on_train_begin(self, logs=None):
        self._take()

    def on_epoch_end(self, epoch, logs=None):
        self._take()


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def _changed(a, b):
    return [i for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)]


@pytest.fixture(scope="module")
def model():
    return _classifier()


def test_backbone_frozen_for_n_epochs_then_trained(model):
    _compile(model)
    backbone = model.get_layer("mobilenet_v2")
    moving = [i for i, v in enumerate(backbone.weights) if "moving" in v.path]
    assert moving and len(moving) < len(backbone.weights)
    snaps = _Snapshots(backbone)
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, validation_data=(x, y),
              callbacks=[FreezeBackbone(2), snaps])
    (b0, h0), (b1, h1), (b2, h2), (b3, h3) = snaps.at
    # Epochs 0 and 1, frozen: nothing of the backbone moves, its BatchNorm statistics included
    # (a BatchNorm in training mode would have updated them); the head learns.
    assert _same(b0, b1) and _same(b1, b2)
    assert _changed(h0, h1) and _changed(h1, h2)
    # Epoch 2, unfrozen: the kernels and the moving statistics change.
    changed = _changed(b2, b3)
    assert set(moving) & set(changed) and set(changed) - set(moving)
    assert len(changed) > len(b3) // 2
    assert _changed(h2, h3)
    # The backbone is trainable again, and the optimizer served it with the variables it had.
    assert backbone.trainable and all(layer.trainable for layer in backbone._flatten_layers())
    assert int(model.optimizer.iterations.numpy()) == 3 * 2


def test_resumed_past_the_frozen_epochs_trains_the_backbone(model):
    _compile(model)
    backbone = model.get_layer("mobilenet_v2")
    snaps = _Snapshots(backbone)
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=3, initial_epoch=2, verbose=0,
              callbacks=[FreezeBackbone(2), snaps])
    (b0, _), (b1, _) = snaps.at
    assert _changed(b0, b1)


def test_a_run_shorter_than_the_freeze_leaves_the_model_trainable(model):
    _compile(model)
    backbone = model.get_layer("mobilenet_v2")
    backbone.get_layer("Conv1").trainable = False  # a layer frozen on purpose stays frozen
    x, y = _data()
    snaps = _Snapshots(backbone)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[FreezeBackbone(5), snaps])
    assert _same(*[b for b, _ in snaps.at])
    assert backbone.trainable and not backbone.get_layer("Conv1").trainable
    assert backbone.get_layer("bn_Conv1").trainable
    backbone.get_layer("Conv1").trainable = True


def test_an_optimizer_built_without_the_backbone_is_refused(model):
    _compile(model)
    backbone = model.get_layer("mobilenet_v2")
    backbone.trainable = False
    model.optimizer.build(model.trainable_variables)  # the head's only
    backbone.trainable = True
    x, y = _data()
    with pytest.raises(RuntimeError, match="optimizer was built without the backbone's variables"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[FreezeBackbone(1)])
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        FreezeBackbone(-1)


def test_config_key():
    from mobilevision.config import ConfigError

    assert mv.load_config("shapes_classifier.yaml").train.freeze_backbone_epochs == 0
    cfg = mv.load_config("shapes_classifier.yaml", ["train.freeze_backbone_epochs=2"])
    assert cfg.train.freeze_backbone_epochs == 2
    with pytest.raises(ConfigError, match=r"key 'train\.freeze_backbone_epochs' must be >= 0"):
        mv.load_config("shapes_classifier.yaml", ["train.freeze_backbone_epochs=-1"])
    with pytest.raises(ConfigError, match=r"^override 'train\.freeze_backbone_epochs=3': key "
                                          r"'train\.freeze_backbone_epochs' unfreezes the backbone "
                                          r"after 3 epoch\(s\), but model\.backbone\.trainable is "
                                          r"false"):
        mv.load_config("shapes_classifier.yaml", ["model.backbone.trainable=false",
                                                  "train.freeze_backbone_epochs=3"])
