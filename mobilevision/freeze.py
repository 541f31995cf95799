"""Train the head alone for the first epochs, then everything (`train.freeze_backbone_epochs`).

    model.compile(...)
    model.fit(..., callbacks=[FreezeBackbone(cfg.train.freeze_backbone_epochs)])

While frozen, the backbone's variables are left out of the gradient step and its BatchNorm layers
run in inference mode: in Keras 3, `trainable = False` on a BatchNormalization layer makes it
normalize with its moving statistics and stop updating them, which is what Keras'
transfer-learning guide relies on, so pretrained statistics are not overwritten by the
statistics of a few batches while the fresh head is still noise.

How it is done with one `model.fit` (checkpoints, resume and the CSV log stay one run):

- Keras traces the train step once and keeps it: a `trainable` change takes effect only in a new
  trace. The callback sets `trainable` at the start of an epoch and asks for a new trace
  (`make_train_function(force=True)`); the evaluation step is traced again too, so the
  validation loss counts the same weight-decay terms as the training loss.
- An optimizer serves only the variables it was built with. Under a distribution strategy
  `fit` builds it before any callback runs; without one Keras would build it in the first
  traced step, with the variables trainable then (the head's alone), so the callback builds it
  first. Either way it is built with every trainable variable, the backbone's included: freezing
  only leaves variables out of a step, and unfreezing brings back variables it knows, with their
  slots (still zero) and the same iteration count and learning-rate schedule. A checkpoint
  holds the same optimizer variables frozen or not, so a run resumes in either phase.

The epoch decides the phase (`epoch < epochs`), so a run resumed after the frozen epochs starts
unfrozen. At the end of `fit` the backbone's layers get back the `trainable` they had.

The retrace is the TensorFlow trainer's (`make_train_function`), which is what our `model.fit`
runs; the JAX trainer gathers the trainable variables once per `fit`, so other backends refuse.
"""

from __future__ import annotations

import keras


class FreezeBackbone(keras.callbacks.Callback):
    """Keep the backbone frozen (BatchNorm in inference mode) for the first `epochs` epochs of
    `fit`, then train it.

    Args:
      epochs: how many epochs to freeze (0: never; the callback does nothing).
      backbone: the backbone layer of the model; default the model's one nested model (our task
        models call the backbone, a functional model, as a layer).
    """

    def __init__(self, epochs: int, backbone: keras.layers.Layer | None = None):
        super().__init__()
        if epochs < 0:
            raise ValueError(f"FreezeBackbone: epochs must be >= 0, got {epochs}")
        self.epochs = int(epochs)
        self.backbone = backbone
        self._saved = None  # {layer: trainable} while frozen

    @property
    def frozen(self) -> bool:
        return self._saved is not None

    def _find_backbone(self):
        if self.backbone is not None:
            return self.backbone
        nested = [layer for layer in self.model.layers if isinstance(layer, keras.Model)]
        if len(nested) != 1:
            names = ", ".join(layer.name for layer in nested) or "none"
            raise ValueError(f"FreezeBackbone: model '{self.model.name}' has {len(nested)} nested "
                             f"models ({names}); pass the backbone to freeze")
        return nested[0]

    def on_train_begin(self, logs=None):
        if not self.epochs:
            return
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"FreezeBackbone retraces the TensorFlow train step; the "
                               f"{keras.backend.backend()} backend is not supported")
        self.backbone = self._find_backbone()
        if not self.backbone.trainable:
            raise ValueError(f"FreezeBackbone: backbone '{self.backbone.name}' is frozen already "
                             f"(trainable=False): there is nothing to unfreeze after "
                             f"{self.epochs} epoch(s)")
        optimizer = self.model.optimizer
        if not optimizer.built:
            with self.model.distribute_strategy.scope():
                optimizer.build(self.model.trainable_variables)
        try:
            optimizer._check_variables_are_known(self.backbone.trainable_variables)
        except (ValueError, AttributeError, KeyError) as e:
            raise RuntimeError(
                f"FreezeBackbone: the optimizer was built without the backbone's variables (it "
                f"was built while the backbone was frozen?), so it could not train them after "
                f"epoch {self.epochs}: build it with the backbone trainable ({e})") from None

    def on_epoch_begin(self, epoch, logs=None):
        if not self.epochs:
            return
        freeze = epoch < self.epochs
        if freeze == self.frozen:
            return
        if freeze:
            self._saved = {layer: layer.trainable for layer in self.backbone._flatten_layers()}
            self.backbone.trainable = False
        else:
            self._restore()
        self._retrace()

    def on_train_end(self, logs=None):
        if self.frozen:
            self._restore()
            self._retrace()

    def _restore(self):
        # `_flatten_layers` lists a layer before the layers inside it, and setting `trainable`
        # sets it on everything inside: restoring in that order gives each layer its own value.
        for layer, trainable in self._saved.items():
            layer.trainable = trainable
        self._saved = None

    def _retrace(self):
        self.model.make_train_function(force=True)
        self.model.test_function = None  # evaluate() traces it again when it next runs
