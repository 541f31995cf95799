"""Semantic segmentation: MobileNetV2 + DeepLabv3 (PAPER.md Table 7), mIoU from a confusion matrix.

The model maps (N, H, W, 3) pixels to (N, H, W, K) float32 logits at the input size. Training
batches are DeepLab-augmented crops (random scale, pad, crop, flip); evaluation runs at each
image's own resolution: the image is resized to fit the model's input (times each of
`eval.scales`), padded, and the logits cropped and resized back to the original size, averaged as
probabilities over scales and (with `eval.flip`) mirrored inputs: the paper's MF.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import keras
import numpy as np

from mobilevision.data.segmentation import IGNORE_LABEL
from mobilevision.heads.deeplabv3 import aspp_rates, deeplabv3_head
from mobilevision.tasks.base import Task, build_backbone, head_taps, kernel_weight_decay
from mobilevision.tasks.optim import build_optimizer

_EMPTY_IMAGE = np.zeros((1, 1, 3), np.uint8)
_EMPTY_LABEL = np.full((1, 1), IGNORE_LABEL, np.uint8)
_PAD_VALUE = 127.5  # the pixel value the backbone's preprocessing maps to 0


def _report_misfit(path):
    """A graph op: print that `path`'s image and label map no longer have one size; -> False."""
    import sys

    import tensorflow as tf

    report = tf.print(tf.strings.join(["mobilevision: skipped ", path, " - its image and label "
                                       "map are no longer the same size (changed since the split "
                                       "was read)"]), output_stream=sys.stderr)
    with tf.control_dependencies([report]):
        return tf.constant(False)


def _ceil_to(value: float, multiple: int = 32) -> int:
    return max(multiple, int(np.ceil(value / multiple - 1e-9)) * multiple)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class SegmentationTask(Task):
    name = "segmentation"
    monitor = "mIoU"
    monitor_mode = "max"
    shapes_kind = "segmentation"
    fit_validation = False  # SegEvalCallback evaluates at the images' own resolution instead

    def __init__(self, cfg):
        super().__init__(cfg)
        self._datasets = {}
        self._scaled_models = {}

    # Model -------------------------------------------------------------------------------------
    def _build_model(self, input_size=None) -> keras.Model:
        """The DeepLabv3 model at `model.input_size` (or `input_size`, for evaluation at other
        scales: the same layers, so weights copy over one to one)."""
        cfg = self.cfg
        if input_size is not None:
            cfg = copy.deepcopy(cfg)
            cfg["model"]["input_size"] = list(input_size)
            cfg["model"]["backbone"]["weights"] = None  # the caller copies all weights over
        b, h = cfg.model.backbone, cfg.model.head
        (tap, _, stride), = head_taps(cfg)
        image = keras.Input(shape=(*cfg.model.input_size, 3), name="image")
        logits = deeplabv3_head(build_backbone(cfg, [tap])(image)[tap], stride, cfg.model.num_classes,
                                aspp=h.aspp, rates=aspp_rates(stride, h.aspp_rates),
                                channels=h.channels, dropout=h.dropout,
                                bn_momentum=h.bn_momentum, weight_decay=kernel_weight_decay(cfg))
        return keras.Model(image, logits, name=f"{b.name}_deeplabv3")

    def compile(self, model, steps_per_epoch):
        from mobilevision.tasks.segmentation_metrics import ConfusionMatrixMetric, SegmentationLoss

        k = self.cfg.model.num_classes
        model.compile(
            optimizer=build_optimizer(self.cfg, steps_per_epoch),
            loss=SegmentationLoss(k, self.cfg.train.class_weights, self.cfg.train.label_smoothing),
            metrics=[ConfusionMatrixMetric(k, "mIoU"), ConfusionMatrixMetric(k, "pixel_accuracy")],
        )

    # Data --------------------------------------------------------------------------------------
    def _class_names_from_config(self):
        d = self.cfg.data
        if d.format == "coco":
            return None  # the categories of the annotation file
        path = Path(d.root) / d.classes_file if d.classes_file else None
        if path is not None and path.is_file():
            from mobilevision.data.segmentation import read_class_names

            return read_class_names(path)
        if d.format == "voc" and d.classes_file in (None, "classes.txt"):
            return None  # the 21 PASCAL VOC classes
        from mobilevision.data.image_folder import DatasetError

        raise DatasetError(f"{path or d.root}: class list not found (data.classes_file: one class "
                           f"name a line, background first)")

    def dataset(self, split: str):
        """The parsed, checked split (cached): a SegmentationDataset."""
        if split not in self._datasets:
            from mobilevision.data.segmentation import read_segmentation

            d = self.cfg.data
            ds = read_segmentation(
                d.format, d.root, split, class_names=self._class_names_from_config(),
                voc={"images": d.voc.images, "masks": d.voc.masks, "list": d.voc.list},
                folder={"images": d.folder.images, "masks": d.folder.masks},
                coco={"images": d.coco.images, "annotations": d.coco.annotations},
                skip_invalid=d.skip_invalid)
            if ds.num_classes != self.cfg.model.num_classes:
                names = ds.class_names
                raise ValueError(f"{self.cfg.get('_source') or 'config'}: model.num_classes is "
                                 f"{self.cfg.model.num_classes} but {ds.source} has {len(names)} "
                                 f"classes, background included ({', '.join(names[:10])}"
                                 f"{', ...' if len(names) > 10 else ''})")
            if ds.skipped:
                print(f"skipped {len(ds.skipped)} invalid example(s) of split '{split}' "
                      f"(data.skip_invalid)")
            self._datasets[split] = ds
        return self._datasets[split]

    @property
    def class_names(self) -> list[str]:
        return self.dataset(self.cfg.data.train_split).class_names

    def build_dataset(self, split: str, training: bool, input_context=None):
        """Training: (images (B, H, W, 3) float32 0..255, labels (B, H, W) int32, 255 = ignore),
        augmented. Evaluation: unbatched (image (h, w, 3) uint8, label (h, w) uint8, index,
        ok) at each image's own size, in record order; ok is False for an unreadable file.
        input_context (training only): the tf.distribute.InputContext of one worker's pipeline,
        which then reads only its share and makes per-replica batches (`pipeline.shard`).
        -> (dataset, number of records)."""
        import tensorflow as tf

        from mobilevision.data.decode import ImageDecodeError
        from mobilevision.data.pipeline import AUTOTUNE, options, with_seeds
        from mobilevision.data.pipeline import per_replica_batch, shard
        from mobilevision.data.segmentation import load_example
        from mobilevision.data.segmentation_augment import train_transform
        from mobilevision.data.skips import SKIPPED

        cfg, d = self.cfg, self.cfg.data
        records = self.dataset(split).records
        k = cfg.model.num_classes
        n = len(records)

        def load_py(index):
            try:
                image, label = load_example(records[int(index)], k)
                return image, label, True
            except ImageDecodeError as e:
                SKIPPED.add(e.path, e.reason)
                return _EMPTY_IMAGE, _EMPTY_LABEL, False

        def load(index):
            image, label, ok = tf.numpy_function(load_py, [index], [tf.uint8, tf.uint8, tf.bool],
                                                 stateful=False)
            image.set_shape([None, None, 3])
            label.set_shape([None, None])
            ok.set_shape([])
            return image, label, index, ok

        if d.decode == "graph":
            load = self._graph_loader(records)

        ds = tf.data.Dataset.from_tensor_slices(np.arange(n, dtype=np.int32))
        if not training:
            ds = ds.map(load, num_parallel_calls=AUTOTUNE)
            return ds.prefetch(AUTOTUNE).with_options(options()), n

        size = tuple(cfg.model.input_size)
        a = d.augment
        ds = ds.shuffle(max(n, 1), seed=cfg.seed, reshuffle_each_iteration=True)
        ds = shard(ds, n, input_context)
        ds = ds.map(load, num_parallel_calls=AUTOTUNE).filter(lambda i, l, idx, ok: ok)

        def train_map(example, seed):
            image, label, _, _ = example
            return train_transform(image, label, seed, size, tuple(a.scale_range), a.flip)

        ds = with_seeds(ds, cfg.seed, input_context).map(train_map, num_parallel_calls=AUTOTUNE)
        ds = ds.batch(per_replica_batch(cfg.train.batch_size, input_context),
                      drop_remainder=n >= cfg.train.batch_size)
        return ds.prefetch(AUTOTUNE).with_options(options()), n

    def _graph_loader(self, records):
        """index int32 scalar -> (image (h, w, 3) uint8, label (h, w) uint8, index, ok), decoded
        in the graph from the verified files (`pipeline.image_files`, `verify_label_maps`): a
        palette or 16-bit label map through its 8-bit grayscale copy, so the indices stay exact.
        COCO records paint their label maps from polygons, in Python (`coco_label_map`)."""
        import tensorflow as tf

        from mobilevision.data.pipeline import (decode_file, graph_decode_label, image_files,
                                                read_verified)
        from mobilevision.data.segmentation import coco_label_map
        from mobilevision.data.verify import verify_label_maps

        images = image_files([r.path for r in records], "graph")
        images = {k: tf.constant(v) for k, v in images.items()}
        masks = [r.mask_path for r in records]
        if all(masks):
            labels = {k: tf.constant(v) for k, v in verify_label_maps(masks).table().items()}
        elif any(masks):  # pragma: no cover - every reader gives all or none
            raise ValueError("records mix label-map files and COCO objects")
        else:
            labels = None

        def painted(index):
            label = tf.numpy_function(lambda i: coco_label_map(records[int(i)]), [index],
                                      tf.uint8, stateful=False)
            return tf.ensure_shape(label, [None, None]), tf.constant(True)

        def load(index):
            image, ok = decode_file({k: tf.gather(v, index) for k, v in images.items()})
            if labels is None:
                label, label_ok = painted(index)
            else:
                label, label_ok = read_verified({k: tf.gather(v, index) for k, v in labels.items()},
                                                graph_decode_label, tf.constant(_EMPTY_LABEL))
            # Sizes were checked when the split was read; a file changed since is skipped, not
            # cropped into a misaligned example.
            fits = tf.reduce_all(tf.equal(tf.shape(label), tf.shape(image)[:2]))
            ok = ok & label_ok
            ok = tf.cond(ok & ~fits, lambda: _report_misfit(images["path"][index]), lambda: ok)
            return image, tf.ensure_shape(label, [None, None]), index, ok

        return load

    # Inference -----------------------------------------------------------------------------------
    def _model_at(self, model, size, sync: bool):
        """`model`, or a copy built at input `size` (cached) holding the same weights."""
        if tuple(size) == tuple(model.input_shape[1:3]):
            return model
        if not isinstance(model, keras.Model):
            from mobilevision.config import ConfigError

            raise ConfigError(f"eval.scales is {list(self.cfg.eval.scales)}, but an exported "
                              f"model has one input size, {tuple(model.input_shape[1:3])}: use "
                              f"eval.scales=[1.0] (and the same for the Keras model, to compare)")
        net = self._scaled_models.get(tuple(size))
        if net is None:
            net = self._scaled_models[tuple(size)] = self._build_model(input_size=size)
            sync = True
        if sync:
            net.set_weights(model.get_weights())
        return net

    def predict_probs(self, model, images, scales=(1.0,), flip=False, sync=True):
        """Class probabilities of each image at its own size.

        Args:
          images: list of (h, w, 3) uint8 RGB arrays (sizes may differ).
          scales: at scale s an image is resized to fit s x the model's input size (aspect
            kept), padded at the bottom and right with 127.5 up to a multiple of 32, run, and
            its logits cropped and resized (bilinear) back to h x w.
          flip: also run the mirrored inputs and mirror their logits back.
          sync: copy `model`'s weights into the models built for other scales (needed after
            training changed them).

        Returns:
          list of (h, w, K) float32 softmax probabilities averaged over scales and flips.
        """
        import cv2

        in_h, in_w = self.cfg.model.input_size
        out = [None] * len(images)
        synced = set()
        for s in scales:
            canvas = (_ceil_to(s * in_h), _ceil_to(s * in_w))
            net = self._model_at(model, canvas, sync and canvas not in synced)
            synced.add(canvas)
            batch = np.full((len(images), *canvas, 3), _PAD_VALUE, np.float32)
            fitted = []
            for i, image in enumerate(images):
                h, w = image.shape[:2]
                f = min(s * in_h / h, s * in_w / w)
                nh, nw = min(max(1, round(h * f)), canvas[0]), min(max(1, round(w * f)), canvas[1])
                resized = image if (nh, nw) == (h, w) else cv2.resize(
                    image, (nw, nh), interpolation=cv2.INTER_LINEAR)
                batch[i, :nh, :nw] = resized
                fitted.append((nh, nw))
            for mirrored in ((False, True) if flip else (False,)):
                x = batch[:, :, ::-1] if mirrored else batch
                logits = keras.ops.convert_to_numpy(net.predict_on_batch(np.ascontiguousarray(x)))
                if mirrored:
                    logits = logits[:, :, ::-1]
                for i, (image, (nh, nw)) in enumerate(zip(images, fitted)):
                    h, w = image.shape[:2]
                    lg = np.ascontiguousarray(logits[i, :nh, :nw], np.float32)
                    if (nh, nw) != (h, w):
                        lg = cv2.resize(lg, (w, h), interpolation=cv2.INTER_LINEAR)
                        lg = lg.reshape(h, w, -1)  # cv2 drops a channel axis of length 1
                    p = _softmax(lg)
                    out[i] = p if out[i] is None else out[i] + p
        passes = len(scales) * (2 if flip else 1)
        return [p / passes for p in out]

    # Evaluation and prediction -------------------------------------------------------------------
    def evaluate(self, model, split, out_dir=None, scales=None, flip=None):
        """mIoU, per-class IoU and pixel accuracy on `split` at the images' own resolution, with
        `eval.scales` and `eval.flip` unless given."""
        from mobilevision.tasks.segmentation_metrics import confusion_matrix, segmentation_scores

        scales = list(scales or self.cfg.eval.scales)
        flip = self.cfg.eval.flip if flip is None else flip
        data = self.dataset(split)
        k = self.cfg.model.num_classes
        ds, _ = self.build_dataset(split, training=False)
        read = 0
        cm = np.zeros((k, k), np.int64)
        batch, first = [], True

        def flush():
            nonlocal first
            probs = self.predict_probs(model, [b[0] for b in batch], scales, flip, sync=first)
            first = False
            for (_, label), p in zip(batch, probs):
                cm[:] += confusion_matrix(label, p.argmax(-1), k)
            batch.clear()

        for image, label, _, ok in ds.as_numpy_iterator():
            if not ok:
                continue
            read += 1
            batch.append((image, label))
            if len(batch) == self.cfg.train.batch_size:
                flush()
        if batch:
            flush()
        scores = segmentation_scores(cm)
        iou = {name: (None if np.isnan(v) else float(v)) for name, v in zip(data.class_names, scores["IoU"])}
        return {"mIoU": scores["mIoU"], "pixel_accuracy": scores["pixel_accuracy"],
                "per_class_IoU": iou, "confusion_matrix": cm.tolist(), "scales": scales,
                "flip": bool(flip), "split": split,
                "num_examples": read, "skipped_examples": dict(data.skipped)}

    # Export --------------------------------------------------------------------------------------
    def export_outputs(self, model, images):
        """-> {"scores": (N, H, W, K) softmax, "labels": (N, H, W) int32 argmax}."""
        import tensorflow as tf

        scores = tf.nn.softmax(model(images, training=False), axis=-1)
        return {"scores": scores, "labels": tf.argmax(scores, axis=-1, output_type=tf.int32)}

    def tflite_outputs(self, model, images, nms="regular"):
        """Scores only: what MediaPipe's ImageSegmenter reads (it takes the argmax itself)."""
        return {"scores": self.export_outputs(model, images)["scores"]}

    def from_exported(self, outputs):
        """-> log-probabilities: evaluation applies softmax to what a model returns (logits),
        and softmax(log p) = p, so the file's scores come through as it computed them."""
        return np.log(np.maximum(np.asarray(outputs["scores"], np.float32), 1e-30))

    def callbacks(self, run_dir):
        """Single-scale validation every `train.eval_every` epochs (and after the last), with
        `val_mIoU` and `val_pixel_accuracy` put into the epoch's logs for the checkpoint."""
        return [SegEvalCallback(self, self.cfg.data.val_split, self.cfg.train.eval_every)]

    def predict_image(self, model, image, class_names):
        """-> ({"size": [h, w], "classes": {name: fraction of the pixels}}, {"overlay": RGB
        image with the classes' colours blended in and a legend of those present, "label":
        (h, w) uint8 label map})."""
        from mobilevision import plots

        names = class_names or self.class_names
        probs = self.predict_probs(model, [image], self.cfg.eval.scales, self.cfg.eval.flip)[0]
        label = probs.argmax(-1).astype(np.uint8)
        counts = np.bincount(label.reshape(-1), minlength=len(names))
        classes = {names[i]: round(float(c) / label.size, 6) for i, c in enumerate(counts) if c}
        return ({"size": list(label.shape), "classes": classes},
                {"overlay": plots.overlay_mask(image, label, names), "label": label})

    def write_prediction(self, out_dir, stem, canvas) -> None:
        """`<stem>_overlay.png` (colour overlay with its legend) and `<stem>_label.png` (palette
        PNG whose pixel values are the class indices, in the overlay's colours)."""
        import cv2
        from PIL import Image

        from mobilevision import plots

        out_dir = Path(out_dir)
        cv2.imwrite(str(out_dir / f"{stem}_overlay.png"),
                    cv2.cvtColor(canvas["overlay"], cv2.COLOR_RGB2BGR))
        label = Image.fromarray(canvas["label"], mode="L")
        label.putpalette(plots.palette().reshape(-1).tolist())
        label.save(out_dir / f"{stem}_label.png")

    # Data report and pictures -------------------------------------------------------------------
    def data_summary(self, split):
        """Pixels per class (label maps; COCO annotations: objects per class), images without
        any object, and the examples and files the reader skipped, with reasons."""
        data = self.dataset(split)
        names = data.class_names
        summary = {"images": len(data.records)}
        if all(r.pixels is not None for r in data.records):
            pixels = np.sum([r.pixels for r in data.records], axis=0)
            summary.update({"pixels_per_class": dict(zip(names, pixels[:-1].tolist())),
                            "ignored_pixels": int(pixels[-1]),
                            "images_without_objects": sum(not r.pixels[1:-1].any()
                                                          for r in data.records)})
        else:  # COCO: painting every label map would read the split twice
            labels = [[o[0] for o in r.objects if not o[2]] for r in data.records]
            flat = np.asarray([v for ls in labels for v in ls], np.int64)
            counts = np.bincount(flat, minlength=len(names))
            summary.update({"objects_per_class": dict(zip(names[1:], counts[1:].tolist())),
                            "images_without_objects": sum(not ls for ls in labels)})
        summary.update({"skipped_examples": dict(data.skipped),
                        "skipped_files": dict(data.unreadable)})
        return summary

    def pictures(self, model, split, results):
        """The confusion matrix and per-class IoU of `results`, and the fixed sample: the true
        label map beside `predict_image`'s, both as overlays."""
        from mobilevision import plots
        from mobilevision.data.decode import ImageDecodeError
        from mobilevision.data.segmentation import load_example

        data = self.dataset(split)
        names = data.class_names
        samples = []
        for i in plots.sample_indices(len(data.records)):
            record = data.records[i]
            try:
                image, label = load_example(record, len(names))
            except ImageDecodeError:
                continue
            samples.append((plots.overlay_mask(image, label, names),
                            self.predict_image(model, image, names)[1]["overlay"],
                            Path(record.path).name, None))
        return plots.TaskPictures(samples=samples, names=names,
                                  confusion=np.asarray(results["confusion_matrix"]),
                                  per_class=("IoU", results["per_class_IoU"]))


class SegEvalCallback(keras.callbacks.Callback):
    def __init__(self, task: SegmentationTask, split: str, every: int):
        super().__init__()
        self.task, self.split, self.every = task, split, max(1, every)

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if logs is None or ((epoch + 1) % self.every and not last):
            return
        metrics = self.task.evaluate(self.task.local_view(self.model), self.split, scales=[1.0],
                                     flip=False)
        logs["val_mIoU"] = float(metrics["mIoU"])
        logs["val_pixel_accuracy"] = float(metrics["pixel_accuracy"])
        print(json.dumps({"val_mIoU": round(metrics["mIoU"], 4),
                          "val_pixel_accuracy": round(metrics["pixel_accuracy"], 4)}))
