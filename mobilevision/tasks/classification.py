"""Image classification: MobileNetV2 + global pooling + `predictions`, top-1/top-5 accuracy."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from mobilevision.heads.classifier import classifier_head
from mobilevision.tasks.base import Task, build_backbone, head_taps, kernel_weight_decay
from mobilevision.tasks.optim import build_optimizer


class ClassificationTask(Task):
    name = "classification"
    monitor = "top1"
    monitor_mode = "max"
    shapes_kind = "classification"

    def __init__(self, cfg):
        super().__init__(cfg)
        self._class_names = None
        self._listed = {}     # split -> (files, labels) it lists (class folders)
        self._confusion = {}  # split -> (K, K) confusion matrix of its last evaluation

    # Model -------------------------------------------------------------------------------------
    def _build_model(self) -> keras.Model:
        cfg = self.cfg
        (tap, _, _), = head_taps(cfg)
        image = keras.Input(shape=(*cfg.model.input_size, 3), name="image")
        probs = classifier_head(build_backbone(cfg, [tap])(image)[tap], cfg.model.num_classes,
                                cfg.model.head.dropout, kernel_weight_decay(cfg))
        return keras.Model(image, probs, name=f"{cfg.model.backbone.name}_classifier")

    def compile(self, model, steps_per_epoch):
        k = min(5, self.cfg.model.num_classes)
        model.compile(
            optimizer=build_optimizer(self.cfg, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=self.cfg.train.label_smoothing),
            # Weighted: an unreadable validation image has weight 0 and must count in no metric
            # (Keras 3 applies sample weights to `weighted_metrics` only; plain `metrics` counted
            # it as a miss).
            weighted_metrics=[keras.metrics.CategoricalAccuracy(name="top1"),
                              keras.metrics.TopKCategoricalAccuracy(k=k, name="top5")],
        )

    # Data --------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Class names in label order: the training split's folders, or the TFDS label names."""
        if self._class_names is None:
            d = self.cfg.data
            if d.format == "folder":
                from mobilevision.data.image_folder import list_image_folder

                _, _, self._class_names = list_image_folder(Path(d.root) / d.train_split)
            else:
                from mobilevision.data.tfds_reader import load_tfds

                _, info = load_tfds(d.tfds.name, d.train_split, d.tfds.data_dir)
                self._class_names = list(info.features[d.tfds.label_key].names)
            self._check_num_classes(self._class_names)
        return self._class_names

    def _check_num_classes(self, names):
        n = self.cfg.model.num_classes
        if len(names) != n:
            where = self.cfg.get("_source") or "config"
            raise ValueError(f"{where}: model.num_classes is {n} but the dataset has "
                             f"{len(names)} classes ({', '.join(names[:10])}"
                             f"{', ...' if len(names) > 10 else ''})")

    def _listing(self, split: str) -> tuple[list[str], list[int]]:
        """(files, labels) of a class-folder split, listed once."""
        if split not in self._listed:
            from mobilevision.data.image_folder import list_image_folder

            d = self.cfg.data
            paths, labels, _ = list_image_folder(Path(d.root) / split, self.class_names)
            self._listed[split] = paths, labels
        return self._listed[split]

    def build_dataset(self, split: str, training: bool, input_context=None):
        """-> (dataset, number of listed examples). Training batches are (images float32
        (B, H, W, 3) in 0..255, one-hot labels (B, K)); evaluation batches add a sample weight
        (B,) that is 0 for an unreadable file. input_context (training only): the
        tf.distribute.InputContext of one worker's pipeline, which then reads only its share
        and makes per-replica batches (`pipeline.shard`)."""
        import tensorflow as tf

        from mobilevision.data import augment
        from mobilevision.data.pipeline import AUTOTUNE, decode_file, options, with_seeds
        from mobilevision.data.pipeline import per_replica_batch, shard

        cfg, d = self.cfg, self.cfg.data
        size = tuple(cfg.model.input_size)
        k = cfg.model.num_classes
        if d.format == "folder":
            from mobilevision.data.pipeline import image_files

            paths, labels = self._listing(split)
            n = len(paths)
            paths = image_files(paths, d.decode)  # the rows decode_file reads
            ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int32)))
            if training:
                ds = ds.shuffle(n, seed=cfg.seed, reshuffle_each_iteration=True)
                ds = shard(ds, n, input_context)

            def load(path, label):
                image, ok = decode_file(path)
                return image, label, tf.cast(ok, tf.float32)

            ds = ds.map(load, num_parallel_calls=AUTOTUNE)
            if training:
                ds = ds.filter(lambda image, label, ok: ok > 0).map(lambda i, l, ok: (i, l))
        else:
            from mobilevision.data.tfds_reader import load_tfds

            ds, info = load_tfds(d.tfds.name, split, d.tfds.data_dir,
                                 input_context if training else None)
            self._check_num_classes(list(info.features[d.tfds.label_key].names))
            n = info.splits[split].num_examples
            ds = ds.map(lambda ex: (ex[d.tfds.image_key], tf.cast(ex[d.tfds.label_key], tf.int32)),
                        num_parallel_calls=AUTOTUNE)
            if training:
                ds = ds.shuffle(min(n, d.shuffle_buffer), seed=cfg.seed, reshuffle_each_iteration=True)
            ds = ds.map(lambda i, l: (tf.image.grayscale_to_rgb(i) if i.shape[-1] == 1 else i, l))
            if not training:
                ds = ds.map(lambda i, l: (i, l, tf.constant(1.0)))

        a = d.augment
        if training:
            def train_map(example, seed):
                image, label = example
                s1, s2 = seed, tf.reverse(seed, [0])
                if a.random_resized_crop:
                    image = augment.random_resized_crop(image, s1, size, a.crop_scale, a.crop_ratio)
                else:
                    image = augment.central_crop_resize(image, size, 1.0)
                if a.flip:
                    image = augment.random_flip(image, s2)
                return image, tf.one_hot(label, k)

            ds = with_seeds(ds, cfg.seed, input_context).map(train_map, num_parallel_calls=AUTOTUNE)
            ds = ds.batch(per_replica_batch(cfg.train.batch_size, input_context),
                          drop_remainder=n >= cfg.train.batch_size)
        else:
            # Evaluation keeps every listed file in place (the dataset's length stays known) and
            # gives an unreadable one weight 0, so it counts in no metric.
            ds = ds.map(lambda i, l, w: (augment.central_crop_resize(i, size, d.eval_crop),
                                         tf.one_hot(l, k), w), num_parallel_calls=AUTOTUNE)
            ds = ds.batch(cfg.train.batch_size)
        return ds.prefetch(AUTOTUNE).with_options(options()), n

    # Evaluation and prediction -------------------------------------------------------------------
    def evaluate(self, model, split, out_dir=None):
        """top1, top5, cross_entropy and per_class_accuracy (the share of each class's images
        whose top class is right; None for a class without images) on `split`."""
        from mobilevision.data.skips import SKIPPED

        ds, n = self.build_dataset(split, training=False)
        logs, cm = self._score(model, ds)
        self._confusion[split] = cm
        listed = self._listed.get(split, ((), ()))[0]
        totals = cm.sum(1)
        return {**{k: float(v) for k, v in logs.items()},
                "per_class_accuracy": {name: (float(cm[i, i] / totals[i]) if totals[i] else None)
                                       for i, name in enumerate(self.class_names)},
                "num_examples": n - len(set(listed) & set(SKIPPED.items())),
                "split": split}

    def _score(self, model, ds) -> tuple[dict, np.ndarray]:
        """top1, top5 and the cross-entropy of the probabilities `model.predict_on_batch` gives
        (the Keras model or an exported file: one path for both) over `ds` (images, one-hot
        labels, weights); corrupt files weigh 0. top1 is the argmax, as Keras's
        CategoricalAccuracy; top5 counts ties in the true class's favour, as in_top_k. The
        cross-entropy (label smoothing included) is not Keras's `loss`, which adds weight decay.
        Also returns the (K, K) confusion matrix of the top class (rows: the true class)."""
        num_classes = self.cfg.model.num_classes
        k = min(5, num_classes)
        eps = self.cfg.train.label_smoothing
        total = top1 = top5 = loss = 0.0
        cm = np.zeros((num_classes, num_classes), np.int64)
        for images, onehot, weight in ds.as_numpy_iterator():
            probs = np.asarray(model.predict_on_batch(images), np.float32)
            label = onehot.argmax(-1)
            # Rank of the true class: how many classes score higher.
            rank = (probs > probs[np.arange(len(label)), label][:, None]).sum(-1)
            smooth = onehot * (1 - eps) + eps / onehot.shape[-1]
            ce = -(smooth * np.log(np.clip(probs, 1e-7, 1.0))).sum(-1)
            total += weight.sum()
            top1 += (weight * (probs.argmax(-1) == label)).sum()
            top5 += (weight * (rank < k)).sum()
            loss += (weight * ce).sum()
            read = weight > 0
            np.add.at(cm, (label[read], probs.argmax(-1)[read]), 1)
        total = max(total, 1e-12)
        return {"top1": top1 / total, "top5": top5 / total, "cross_entropy": loss / total}, cm

    def export_outputs(self, model, images):
        return {"probabilities": model(images, training=False)}

    def from_exported(self, outputs):
        return np.asarray(outputs["probabilities"], np.float32)

    def predict_image(self, model, image, class_names, top_k=5):
        """-> ({"predictions": [{"class", "class_id", "score"}, ...top 5]}, the image with the top
        class and its score drawn on it)."""
        import tensorflow as tf

        from mobilevision import plots
        from mobilevision.data import augment

        names = class_names or [f"class_{i}" for i in range(self.cfg.model.num_classes)]
        size = tuple(self.cfg.model.input_size)
        x = augment.central_crop_resize(tf.constant(image), size, self.cfg.data.eval_crop)
        probs = np.asarray(model.predict_on_batch(x[None]))[0]
        order = np.argsort(-probs)[:top_k]
        preds = [{"class": names[i], "class_id": int(i), "score": float(probs[i])} for i in order]
        top = preds[0]
        canvas = plots.draw_caption(image, f"{top['class']} {top['score']:.2f}",
                                    top["class_id"] + 1)
        return {"predictions": preds}, canvas

    # Data report and pictures -------------------------------------------------------------------
    def data_summary(self, split):
        """Images per class of a class-folder split (a TFDS split: its size only; counting its
        classes would read it whole). Unreadable images are found as they are decoded and
        reported at the end of each epoch."""
        d = self.cfg.data
        if d.format != "folder":
            from mobilevision.data.tfds_reader import load_tfds

            _, info = load_tfds(d.tfds.name, split, d.tfds.data_dir)
            return {"images": info.splits[split].num_examples, "images_per_class": None}
        paths, labels = self._listing(split)
        counts = np.bincount(np.asarray(labels, np.int64), minlength=len(self.class_names))
        return {"images": len(paths),
                "images_per_class": dict(zip(self.class_names, counts.tolist()))}

    def pictures(self, model, split, results):
        """The confusion matrix of the last evaluation of `split`, and the fixed sample: the
        true class beside `predict_image`'s answer (a TFDS split: its first images)."""
        from mobilevision import plots

        names = self.class_names
        samples = []
        for image, label, caption in self._samples(split):
            result, drawn = self.predict_image(model, image, names)
            top = result["predictions"][0]["class_id"]
            samples.append((plots.draw_caption(image, names[label], label + 1), drawn, caption,
                            top == label))
        return plots.TaskPictures(samples=samples, names=names,
                                  confusion=self._confusion.get(split))

    def _samples(self, split):
        """[(image RGB, label, caption)] of the split's fixed sample; unreadable files left out."""
        from mobilevision import plots
        from mobilevision.data.decode import ImageDecodeError, read_image

        d = self.cfg.data
        if d.format != "folder":
            from mobilevision.data.tfds_reader import load_tfds

            ds, _ = load_tfds(d.tfds.name, split, d.tfds.data_dir)
            return [(np.asarray(ex[d.tfds.image_key]) if ex[d.tfds.image_key].shape[-1] == 3
                     else np.repeat(ex[d.tfds.image_key], 3, -1), int(ex[d.tfds.label_key]),
                     f"{split}[{i}]")
                    for i, ex in enumerate(ds.take(plots.SAMPLES).as_numpy_iterator())]
        paths, labels = self._listing(split)
        out = []
        for i in plots.sample_indices(len(paths)):
            try:
                out.append((read_image(paths[i]), labels[i], Path(paths[i]).name))
            except ImageDecodeError:
                continue
        return out
