"""Object detection: a backbone + SSDLite, anchors matched in the input pipeline, COCO mAP.

Model outputs raw tensors ({"boxes": (N, A, 4) box-coder codes, "classes": (N, A, K+1)
logits}); target encoding happens in tf.data; decoding and per-class NMS once, in `decode`
(TensorFlow ops), which evaluation, predict and the SavedModel share.
Boxes inside the pipeline are [ymin, xmin, ymax, xmax] normalized to the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from mobilevision.heads.ssdlite import ssdlite_head
from mobilevision.ops.anchors import SSDAnchorGenerator
from mobilevision.tasks.base import Task, build_backbone, head_taps, kernel_weight_decay
from mobilevision.tasks.optim import build_optimizer

# ssd_random_crop of the TF OD API: one of these minimum object coverages per example.
MIN_OBJECT_COVERED = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


@keras.saving.register_keras_serializable(package="mobilevision")
class SSDModel(keras.Model):
    """The functional detector (`SSDModel(image, {"boxes": ..., "classes": ...})`) whose loss
    sees both outputs at once: the class targets pick the anchors whose boxes are trained, which
    a per-output `compile(loss=...)` cannot express."""

    ssd_loss = None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = self.ssd_loss(y, y_pred, sample_weight)
        if self.losses:  # weight decay, which Keras scales for tf.distribute as for any model
            loss = loss + super().compute_loss(x, y, y_pred, sample_weight, training)
        return loss


class DetectionTask(Task):
    name = "detection"
    monitor = "AP"
    monitor_mode = "max"
    shapes_kind = "detection"
    fit_validation = False  # COCOeval runs in CocoEvalCallback instead

    def __init__(self, cfg):
        super().__init__(cfg)
        self._datasets = {}
        self._evaluators = {}
        self._tfds = {}
        self._map_sizes = None
        self._anchors = None
        self._decode_fn = None
        a = cfg.model.head.anchors
        self.anchor_generator = SSDAnchorGenerator(a.min_scale, a.max_scale, a.aspect_ratios)

    # Anchors and model -------------------------------------------------------------------------
    @property
    def feature_sizes(self) -> list[tuple[int, int]]:
        """(h, w) of every map the head predicts on, as the head built them (a model is built
        once to learn them when none has been yet)."""
        if self._map_sizes is None:
            self._build_model()
        return self._map_sizes

    def anchors(self) -> np.ndarray:
        """(A, 4) anchors in the order of the head's outputs, made from the maps the head built;
        computed once, since target encoding and decoding need them."""
        if self._anchors is None:
            self._anchors = self.anchor_generator(self.feature_sizes,
                                                  tuple(self.cfg.model.input_size))
        return self._anchors

    def num_anchors(self) -> list[int]:
        """Anchors per location of each map the head predicts on."""
        return self.anchor_generator.num_anchors_per_location(len(self.feature_sizes))

    def feature_maps(self) -> list[dict]:
        """Every map the head predicts on, the backbone taps then the extra layers, with its
        [h, w], stride (input height / h, so 320 px over 3 rows is 106.7) and anchors: what
        `profile` shows."""
        h, _ = self.cfg.model.input_size
        taps = super().feature_maps()
        extras = [{"name": f"ssd_extra_{i}"} for i in range(1, len(self.feature_sizes) - len(taps) + 1)]
        maps = []
        for m, (mh, mw), n in zip(taps + extras, self.feature_sizes, self.num_anchors()):
            maps.append({"name": m["name"], "size": [mh, mw], "stride": round(h / mh, 2),
                         "anchors_per_location": n, "anchors": mh * mw * n})
        return maps

    def _build_model(self) -> keras.Model:
        cfg = self.cfg
        image = keras.Input(shape=(*cfg.model.input_size, 3), name="image")
        maps = build_backbone(cfg, cfg.model.head.features)(image)
        outputs, sizes = ssdlite_head([maps[name] for name, _, _ in head_taps(cfg)],
                                      cfg.model.num_classes, self.anchor_generator,
                                      depth_multiplier=cfg.model.backbone.alpha,
                                      bn_momentum=cfg.model.head.bn_momentum,
                                      weight_decay=kernel_weight_decay(cfg))
        # The one place anchors meet the head: the maps it built decide both, and the head's
        # output count is checked against them.
        per_location = self.anchor_generator.num_anchors_per_location(len(sizes))
        count = sum(h * w * n for (h, w), n in zip(sizes, per_location))
        if outputs["boxes"].shape[1] != count:  # pragma: no cover - a head / generator bug
            raise AssertionError(f"the head returns {outputs['boxes'].shape[1]} boxes but its "
                                 f"maps {sizes} have {count} anchors")
        if self._map_sizes is None:
            self._map_sizes = sizes
        return SSDModel(image, outputs, name=f"{cfg.model.backbone.name}_ssdlite")

    def compile(self, model, steps_per_epoch):
        from mobilevision.tasks.detection_loss import SSDLoss

        h = self.cfg.model.head
        model.ssd_loss = SSDLoss(classification=h.loss, negative_ratio=h.neg_pos_ratio)
        model.compile(optimizer=build_optimizer(self.cfg, steps_per_epoch), loss=None)

    # Data --------------------------------------------------------------------------------------
    def coco(self, split: str):
        """The parsed split (cached): a CocoDataset of per-image box records."""
        if split not in self._datasets:
            d = self.cfg.data
            if d.format == "tfds":
                from mobilevision.data.tfds_detection import tfds_detection

                self._tfds[split], ds = tfds_detection(d.tfds.name, split, d.tfds.data_dir,
                                                       image_key=d.tfds.image_key)
            else:
                from mobilevision.data.coco import read_coco

                root = Path(d.root)
                ds = read_coco(root / d.coco.annotations.format(split=split),
                               root / d.coco.images.format(split=split),
                               skip_invalid=d.skip_invalid)
            if ds.num_classes != self.cfg.model.num_classes:
                raise ValueError(f"{self.cfg.get('_source') or 'config'}: model.num_classes is "
                                 f"{self.cfg.model.num_classes} but {ds.instances.source} has "
                                 f"{ds.num_classes} categories")
            self._datasets[split] = ds
        return self._datasets[split]

    @property
    def class_names(self) -> list[str]:
        return self.coco(self.cfg.data.train_split).category_names

    def build_dataset(self, split: str, training: bool, input_context=None):
        """Training: (images (B, H, W, 3) float32 0..255, {"boxes": (B, A, 4), "classes": (B, A)}).
        Evaluation: (images, image indices (B,)) in record order, for `evaluate`.
        input_context (training only): the tf.distribute.InputContext of one worker's pipeline,
        which then reads only its share and makes per-replica batches (`pipeline.shard`).
        -> (dataset, number of records)."""
        import tensorflow as tf

        from mobilevision.data import detection_augment as aug
        from mobilevision.data.pipeline import AUTOTUNE, decode_file, options, with_seeds
        from mobilevision.data.pipeline import per_replica_batch, shard
        from mobilevision.ops.matcher import encode_targets

        cfg, d = self.cfg, self.cfg.data
        size = tuple(cfg.model.input_size)
        records = self.coco(split).records
        n = len(records)
        if d.format == "tfds":
            # (image, boxes, labels 1..K, crowd, ok) straight from the TFDS examples.
            def load(index, ex):
                objects = ex["objects"]
                return (ex[d.tfds.image_key], objects["bbox"], tf.cast(objects["label"], tf.int32) + 1,
                        objects["is_crowd"], tf.constant(True), tf.cast(index, tf.int32))

            examples = self._tfds[split]
            if training and input_context is not None:  # this worker's share, read alone
                from mobilevision.data.tfds_reader import load_tfds

                examples = load_tfds(d.tfds.name, split, d.tfds.data_dir, input_context)[0]
            ds = examples.enumerate().map(load, num_parallel_calls=AUTOTUNE)
        else:
            from mobilevision.data.pipeline import image_files

            lengths = [len(r.boxes) for r in records]
            flat = lambda key, dt, shape: np.concatenate(  # noqa: E731
                [getattr(r, key).astype(dt).reshape(shape) for r in records]) if n else np.zeros(shape, dt)
            ds = tf.data.Dataset.from_tensor_slices({
                "image": image_files([r.path for r in records], d.decode),
                "index": np.arange(n, dtype=np.int32),
                "boxes": tf.RaggedTensor.from_row_lengths(flat("boxes", np.float32, (-1, 4)), lengths),
                "labels": tf.RaggedTensor.from_row_lengths(flat("labels", np.int32, (-1,)), lengths),
                "crowd": tf.RaggedTensor.from_row_lengths(flat("iscrowd", bool, (-1,)), lengths)})

            def load(ex):
                image, ok = decode_file(ex["image"])
                return image, ex["boxes"], ex["labels"], ex["crowd"], ok, ex["index"]

            if training:
                ds = ds.shuffle(max(n, 1), seed=cfg.seed, reshuffle_each_iteration=True)
                ds = shard(ds, n, input_context)
            ds = ds.map(load, num_parallel_calls=AUTOTUNE)
        if not training:
            def eval_map(image, boxes, labels, crowd, ok, index):
                image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
                return tf.ensure_shape(image, [*size, 3]), index, tf.cast(ok, tf.float32)

            ds = ds.map(eval_map, num_parallel_calls=AUTOTUNE).batch(cfg.train.batch_size)
            return ds.prefetch(AUTOTUNE).with_options(options()), n

        anchors = tf.constant(self.anchors())
        a = d.augment
        if d.format == "tfds":
            ds = ds.shuffle(min(max(n, 1), d.shuffle_buffer), seed=cfg.seed, reshuffle_each_iteration=True)
        ds = ds.filter(lambda i, b, l, c, ok, index: ok)

        def train_map(example, seed):
            image, boxes, labels, crowd, _, _ = example
            image = tf.cast(image, tf.float32)
            seeds = tf.random.experimental.stateless_split(seed, 6)
            if a.photometric:
                image = aug.photometric(image, seeds[0])
            if a.zoom_out:
                image, boxes = aug.zoom_out(image, boxes, seeds[1], a.zoom_out_max)
            if a.ssd_crop:
                image, boxes, labels, crowd = aug.ssd_random_crop(
                    image, boxes, labels, crowd, seeds[2], MIN_OBJECT_COVERED)
            if a.flip:
                image, boxes = aug.random_flip(image, boxes, seeds[3])
            image = tf.image.resize(image, size, method="bilinear")
            box_t, cls_t = encode_targets(anchors, boxes, labels, gt_ignore=crowd,
                                          iou_threshold=cfg.model.head.iou_threshold)
            return tf.ensure_shape(image, [*size, 3]), {"boxes": box_t, "classes": cls_t}

        ds = with_seeds(ds, cfg.seed, input_context).map(train_map, num_parallel_calls=AUTOTUNE)
        ds = ds.batch(per_replica_batch(cfg.train.batch_size, input_context),
                      drop_remainder=n >= cfg.train.batch_size)
        return ds.prefetch(AUTOTUNE).with_options(options()), n

    # Decoding: one body, in TensorFlow ops, for evaluation, predict and every export ----------
    def class_probabilities(self, logits):
        """Class logits (N, A, K+1) tensor -> probabilities as trained: sigmoid for the focal
        loss, else softmax. Column 0 is background."""
        import tensorflow as tf

        if self.cfg.model.head.loss == "focal":
            return tf.sigmoid(logits)
        return tf.nn.softmax(logits, axis=-1)

    def decode(self, raw) -> dict:
        """The model's raw outputs {"boxes": (N, A, 4) codes, "classes": (N, A, K+1) logits}
        (tensors or arrays) -> the detections {"boxes" (N, D, 4) normalized yxyx clipped to the
        image, "classes" (N, D) int32 0-based (index into labels.txt), "scores" (N, D),
        "count" (N,)}: box decoding and per-class NMS (`model.head` IoU, score threshold and
        max detections), as TensorFlow ops. This is what a SavedModel returns and what evaluation
        and predict consume."""
        import tensorflow as tf

        from mobilevision.ops import box_coder
        from mobilevision.ops.boxes import clip_boxes
        from mobilevision.ops.nms import multiclass_nms

        h = self.cfg.model.head
        codes = tf.convert_to_tensor(raw["boxes"], tf.float32)
        boxes = clip_boxes(box_coder.decode(codes, tf.constant(self.anchors())))
        scores = self.class_probabilities(tf.convert_to_tensor(raw["classes"], tf.float32))[..., 1:]
        boxes, scores, classes, count = multiclass_nms(
            boxes, scores, iou_threshold=h.nms_iou, score_threshold=h.score_threshold,
            max_detections=h.max_detections, max_per_class=h.max_detections, label_offset=0)
        return {"boxes": boxes, "classes": classes, "scores": scores, "count": count}

    def postprocess(self, outputs) -> dict:
        """What a model's `predict_on_batch` returns -> the detections of `decode` as numpy.

        Raw outputs (the Keras model, an ONNX file) are decoded by `decode` (traced once); a
        SavedModel or TFLite file decoded them itself (export.runtime hands them over in the
        same structure), so they pass through."""
        if "count" not in outputs:
            if self._decode_fn is None:
                import tensorflow as tf

                self._decode_fn = tf.function(self.decode, reduce_retracing=True)
            outputs = self._decode_fn({"boxes": outputs["boxes"], "classes": outputs["classes"]})
        return {k: np.asarray(v) for k, v in outputs.items()}

    # Export --------------------------------------------------------------------------------------
    def export_outputs(self, model, images):
        """-> `decode` of the model's outputs (TensorFlow ops, traced into the SavedModel)."""
        return self.decode(model(images, training=False))

    def tflite_outputs(self, model, images, nms="regular"):
        """-> the same names from TFLite's TFLite_Detection_PostProcess op (classes as float),
        the anchors embedded in the file. nms: "regular" is per-class NMS, the algorithm of
        Keras evaluation (the op runs it on unclipped boxes and does not clip them; Keras clips
        first); "fast" the op's class-agnostic variant (one class per box)."""
        import tensorflow as tf

        from mobilevision.export.serving import detection_postprocess_fn
        from mobilevision.ops.boxes import yxyx_to_center

        out = model(images, training=False)
        # The op wants anchors in center form (ycenter, xcenter, h, w) and codes (ty, tx, th, tw).
        anchors = tf.constant(yxyx_to_center(self.anchors()).astype(np.float32))
        boxes, classes, scores, count = detection_postprocess_fn(self.cfg, nms)(
            out["boxes"], self.class_probabilities(out["classes"]), anchors)
        return {"boxes": boxes, "classes": classes, "scores": scores, "count": count}

    def from_exported(self, outputs):
        """A SavedModel's or TFLite file's detections -> `decode`'s structure and types. TFLite's
        op runs NMS on unclipped boxes and never clips; its boxes are clipped as `decode`
        clips before NMS."""
        return {"boxes": np.clip(np.asarray(outputs["boxes"], np.float32), 0.0, 1.0),
                "classes": np.asarray(outputs["classes"]).astype(np.int32),
                "scores": np.asarray(outputs["scores"], np.float32),
                "count": np.asarray(outputs["count"]).astype(np.int32).reshape(-1)}

    def detect(self, model, split: str) -> tuple[list[dict], list[int]]:
        """Run on a split -> (COCO-results dicts in the dataset's category ids and original
        pixels, the image ids that were read): an unreadable image has no detections and is
        left out of the evaluation, not counted as missing every box."""
        from mobilevision.tasks.coco_eval import detections_to_coco

        coco = self.coco(split)
        ds, _ = self.build_dataset(split, training=False)
        results, read = [], []
        for images, indices, ok in ds:
            d = self.postprocess(model.predict_on_batch(images))
            for i, index in enumerate(indices.numpy()):
                if not ok[i]:
                    continue
                r = coco.records[index]
                read.append(r.image_id)
                c = int(d["count"][i])
                results += detections_to_coco(r.image_id, d["boxes"][i, :c], d["scores"][i, :c],
                                              d["classes"][i, :c] + 1, r.width, r.height,
                                              coco.category_ids)
        return results, read

    def evaluate(self, model, split, out_dir=None):
        """COCOeval bbox metrics on `split`; with out_dir, also writes the detections there as
        COCO results (`detections_<split>.json`, the dataset's category ids, original pixels)."""
        from mobilevision.tasks.coco_eval import CocoEvaluator
        from mobilevision.utils import atomic_write_json

        coco = self.coco(split)
        if split not in self._evaluators:
            self._evaluators[split] = CocoEvaluator(coco.instances)
        detections, image_ids = self.detect(model, split)
        if out_dir is not None:
            atomic_write_json(Path(out_dir) / f"detections_{split}.json", detections)
        metrics = self._evaluators[split].evaluate(detections, image_ids=image_ids)
        metrics.pop("summary_text", None)
        metrics.update({"split": split, "num_examples": len(image_ids),
                        "dropped_boxes": dict(coco.dropped), "clipped_boxes": coco.clipped,
                        "skipped_annotations": coco.skipped})
        return metrics

    def callbacks(self, run_dir):
        """Evaluate with COCOeval every `train.eval_every` epochs and put `val_AP` etc. into the
        epoch's logs (before the checkpoint callback reads them)."""
        return [CocoEvalCallback(self, self.cfg.data.val_split, self.cfg.train.eval_every)]

    def predict_image(self, model, image, class_names):
        """-> ({"detections": [{"class", "label", "score", "bbox" [x, y, w, h] in the image's
        pixels}]}, the image with the boxes scoring at least model.head.draw_threshold drawn)."""
        import tensorflow as tf

        from mobilevision import plots

        names = class_names or self.class_names
        h, w = image.shape[:2]
        x = tf.image.resize(tf.cast(image, tf.float32), tuple(self.cfg.model.input_size))[None]
        d = self.postprocess(model.predict_on_batch(x))
        c = int(d["count"][0])
        boxes = d["boxes"][0, :c][:, [1, 0, 3, 2]] * [w, h, w, h]  # [x0, y0, x1, y1] pixels
        scores, classes = d["scores"][0, :c], d["classes"][0, :c].astype(int)
        dets = [{"class": names[k], "label": int(k) + 1, "score": float(score),
                 "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
                for (x0, y0, x1, y1), score, k in zip(boxes, scores, classes)]
        shown = scores >= self.cfg.model.head.draw_threshold
        canvas = plots.draw_detections(image, boxes[shown], classes[shown] + 1, names,
                                       scores[shown])
        return {"detections": dets}, canvas

    # Data report and pictures -------------------------------------------------------------------
    def data_summary(self, split):
        """Objects per class (crowd regions counted apart), images without objects, and the
        boxes, annotations and files the reader dropped, clipped or skipped, with reasons."""
        coco = self.coco(split)
        names = coco.category_names
        counts = np.zeros(len(names), np.int64)
        crowd = empty = 0
        for r in coco.records:
            labels = r.labels[~r.iscrowd]
            counts += np.bincount(labels - 1, minlength=len(names))
            crowd += int(r.iscrowd.sum())
            empty += labels.size == 0
        return {"images": len(coco.records), "objects": int(counts.sum()),
                "objects_per_class": dict(zip(names, counts.tolist())), "crowd_regions": crowd,
                "images_without_objects": int(empty), "dropped_boxes": dict(coco.dropped),
                "clipped_boxes": coco.clipped, "skipped_annotations": dict(coco.skipped),
                "skipped_files": dict(coco.instances.unreadable)}

    def pictures(self, model, split, results):
        """PR curves at IoU 0.5 from the last COCOeval of `split` (its own precision array),
        per-class AP, and the fixed sample: true boxes beside `predict_image`'s."""
        from mobilevision import plots

        coco = self.coco(split)
        names = coco.category_names
        samples = []
        for index, image in self._samples(split):
            r = coco.records[index]
            h, w = image.shape[:2]
            boxes = r.boxes[~r.iscrowd][:, [1, 0, 3, 2]] * [w, h, w, h]
            truth = plots.draw_detections(image, boxes, r.labels[~r.iscrowd], names)
            samples.append((truth, self.predict_image(model, image, names)[1],
                            Path(r.path).name, None))
        evaluator = self._evaluators.get(split)
        pr = None
        if evaluator is not None and evaluator.precision is not None:
            pr = (*evaluator.pr_curves(iou=0.5), 0.5)
        return plots.TaskPictures(samples=samples, names=names,
                                  per_class=("AP", results["per_class_AP"]), pr=pr)

    def _samples(self, split):
        """[(record index, image RGB)] of the split's fixed sample (a TFDS split: its first
        images); unreadable files left out."""
        from mobilevision import plots
        from mobilevision.data.decode import ImageDecodeError, read_image

        if self.cfg.data.format == "tfds":
            key = self.cfg.data.tfds.image_key
            return [(i, ex[key]) for i, ex in
                    enumerate(self._tfds[split].take(plots.SAMPLES).as_numpy_iterator())]
        records = self.coco(split).records
        out = []
        for i in plots.sample_indices(len(records)):
            try:
                out.append((i, read_image(records[i].path)))
            except ImageDecodeError:
                continue
        return out


class CocoEvalCallback(keras.callbacks.Callback):
    def __init__(self, task: DetectionTask, split: str, every: int):
        super().__init__()
        self.task, self.split, self.every = task, split, max(1, every)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        metrics = self.task.evaluate(self.task.local_view(self.model), self.split)
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
            logs[f"val_{key}"] = float(metrics[key])
        print(json.dumps({f"val_{k}": round(float(metrics[k]), 4) for k in ("AP", "AP50", "AP75")}))
