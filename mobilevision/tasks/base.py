"""What every task shares: the backbone from config, weight loading, compile, the task interface."""

from __future__ import annotations

from pathlib import Path

import keras

from mobilevision.backbones import BACKBONES


def kernel_weight_decay(cfg) -> float:
    """L2 on kernels, except with AdamW, whose decay is decoupled in the optimizer."""
    return 0.0 if cfg.train.optimizer.name == "adamw" else cfg.train.weight_decay


def head_taps(cfg) -> list[tuple[str, int, int]]:
    """The backbone taps the task's head reads, finest first: [(name, channels, stride)].

    The names are `model.head.features` (the config loader fills in the backbone's default for
    the task and checks them); channels and strides are the backbone's `feature_specs`."""
    b = cfg.model.backbone
    specs = BACKBONES[b.name].feature_specs(b.alpha, b.output_stride)
    return [(name, *specs[name]) for name in cfg.model.head.features]


def build_backbone(cfg, taps=None) -> keras.Model:
    """The backbone of `cfg.model.backbone`, with its weights file loaded by layer name.

    taps: the layer names to return (default: the backbone's useful taps, `Backbone.taps`;
      a task passes its head's, `model.head.features`, so layers after them are not built).
    Returns keras.Model: (N, H, W, 3) pixels 0..255 -> {tap: (N, H/s, W/s, C)}."""
    b = cfg.model.backbone
    h, w = cfg.model.input_size
    model = BACKBONES[b.name].build(input_shape=(h, w, 3), alpha=b.alpha,
                                    output_stride=b.output_stride,
                                    taps=tuple(taps or BACKBONES[b.name].taps),
                                    bn_momentum=b.bn_momentum,
                                    weight_decay=kernel_weight_decay(cfg))
    if b.weights:
        from mobilevision.backbones.weights import load_weights_by_name

        load_weights_by_name(model, b.weights, allow_unused=True)
    model.trainable = b.trainable
    return model


class Task:
    """One task end to end. Subclasses set `name`, `monitor` (the metric that picks the best
    checkpoint; `val_` is prefixed during training) and `monitor_mode`, and implement the hooks."""

    name = ""
    monitor = ""
    monitor_mode = "max"
    fit_validation = True  # pass the validation split to fit (else callbacks() evaluates)
    shapes_kind = ""       # the shapes generator's layout for this task

    def __init__(self, cfg):
        self.cfg = cfg

    def build_model(self) -> keras.Model:
        """The task model (uncompiled) with `model.weights` loaded when the config names a file:
        a Keras 3 file of this same model with Keras' own loader, any other file by layer name
        (`load_model_weights`)."""
        model = self._build_model()
        if self.cfg.model.weights:
            from mobilevision.backbones.weights import load_model_weights

            load_model_weights(model, self.cfg.model.weights)
        return model

    # Hooks -----------------------------------------------------------------------------------
    def _build_model(self) -> keras.Model:
        raise NotImplementedError

    def build_dataset(self, split: str, training: bool, input_context=None):
        """-> (tf.data.Dataset of (images, targets) batches, number of examples in the split).

        input_context: for training under a strategy that shards input (multi_worker, tpu), the
        tf.distribute.InputContext of this worker's pipeline: the dataset then reads only the
        worker's share of the split (`data.pipeline.shard`, before anything is read) and makes
        per-replica batches (`data.pipeline.per_replica_batch`)."""
        raise NotImplementedError

    def compile(self, model: keras.Model, steps_per_epoch: int) -> None:
        raise NotImplementedError

    def evaluate(self, model: keras.Model, split: str, out_dir=None) -> dict:
        """Metrics on a split as a dict (written to eval.json); out_dir receives per-example
        results where the task writes any."""
        raise NotImplementedError

    def predict(self, model: keras.Model, paths, out_dir, class_names=None) -> list[dict]:
        """Run on image files; write `<stem>.jpg` annotated into out_dir and return one result
        per file ({"file", ...} or {"file", "error"} for an unreadable one)."""
        from mobilevision.data.decode import ImageDecodeError, read_image

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for path in paths:
            try:
                image = read_image(path)
            except ImageDecodeError as e:
                results.append({"file": str(path), "error": str(e)})
                continue
            result, canvas = self.predict_image(model, image, class_names)
            self.write_prediction(out_dir, Path(path).stem, canvas)
            results.append({"file": str(path), **result})
        return results

    def write_prediction(self, out_dir, stem: str, canvas) -> None:
        """Write what `predict_image` drew for one image (RGB): `<stem>.jpg` (tasks override)."""
        import cv2

        cv2.imwrite(str(Path(out_dir) / f"{stem}.jpg"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))

    def predict_image(self, model, image, class_names):
        """image (h, w, 3) uint8 RGB -> (result dict, annotated RGB image to write), drawn with
        `mobilevision.plots`."""
        raise NotImplementedError

    # What people look at: the data before training, the pictures after evaluation ------------
    def data_summary(self, split: str) -> dict:
        """What the split holds, for data.json (`mobilevision.report`): {"images": n,
        "<unit>_per_class": {class: count} (unit: images, objects or pixels; None when it cannot
        be counted without reading the whole dataset), and what the reader skipped, dropped or
        clipped, with reasons}."""
        raise NotImplementedError

    def pictures(self, model, split: str, results: dict):
        """What the last `evaluate(model, split)` (its `results`) shows: a `plots.TaskPictures`
        with the fixed sample of the split drawn as ground truth and as `predict_image` draws
        the prediction, and the task's figures (PR curves, confusion matrix, per-class bars)."""
        raise NotImplementedError

    # Export: what the exported files compute (formats.TASK_OUTPUTS), and back -----------------
    def export_outputs(self, model, images) -> dict:
        """images (N, H, W, 3) float32 0..255 tensor -> the decoded outputs a SavedModel
        returns, by name (TensorFlow ops, traced into the file)."""
        raise NotImplementedError

    def tflite_outputs(self, model, images, nms: str = "regular") -> dict:
        """The same for a TFLite file (batch 1): by default the SavedModel's outputs."""
        return self.export_outputs(model, images)

    def from_exported(self, outputs: dict):
        """An exported file's outputs (numpy, by name) -> what the Keras model's
        `predict_on_batch` returns, so evaluation runs unchanged on the file (export.runtime)."""
        raise NotImplementedError

    def local_view(self, model: keras.Model) -> keras.Model:
        """`model`, or for a model trained under a tf.distribute strategy with several replicas,
        a single-device copy holding its current weights. Evaluation calls `predict_on_batch`,
        which a distributed model answers once per replica (N images give N x replicas rows)
        and, across workers, only together with every worker."""
        strategy = getattr(model, "_distribute_strategy", None)
        if strategy is None or strategy.num_replicas_in_sync == 1:
            return model
        local = getattr(self, "_local_model", None)
        if local is None:
            # Callbacks run outside the strategy's scope, so this model is a plain one.
            local = self._local_model = self._build_model()
            self.compile(local, steps_per_epoch=1)  # evaluation reads the compiled loss
        local.set_weights(model.get_weights())
        return local

    def feature_maps(self) -> list[dict]:
        """What `profile` shows of the head's input: per map its name, [h, w] and stride."""
        h, w = self.cfg.model.input_size
        return [{"name": name, "size": [h // stride, w // stride], "channels": channels,
                 "stride": stride} for name, channels, stride in head_taps(self.cfg)]

    def callbacks(self, run_dir) -> list:
        """Extra callbacks, run before the checkpoint callback reads the epoch's logs."""
        return []

    def steps_per_epoch(self, num_examples: int) -> int:
        b = self.cfg.train.batch_size
        return max(1, num_examples // b)

    def prepare_data(self) -> None:
        """Generate the synthetic dataset on first use (configs with `data.synthetic: shapes`),
        in the layout this task reads (`shapes_kind`)."""
        d = self.cfg.data
        if d.synthetic == "shapes":
            from mobilevision.data.shapes import ensure_shapes

            optional = {k: d.shapes[k] for k in ("texture_contrast", "min_size_frac")
                        if d.shapes[k] is not None}
            ensure_shapes(d.root, self.shapes_kind, num_train=d.shapes.num_train,
                          num_val=d.shapes.num_val, image_size=d.shapes.image_size,
                          seed=d.shapes.seed, **optional)
