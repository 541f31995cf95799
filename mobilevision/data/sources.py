"""Data sources: one per dataset format, each what the pipeline builder, the data report, the
evaluation and the pictures read of a split. A task never branches on the format: it asks
`source_for(cfg)` and gets one of these, each with the same surface.

    source = source_for(cfg)          # by (cfg.task, cfg.data.format), see SOURCES
    source.class_names                # class names in label order (the training split's)
    source.records(split)             # the parsed split, read and checked once
    source.examples(split, context)   # (keys, load, n): the unread keys as a tf.data.Dataset (file
                                      #   rows, record indices or TFDS examples; this worker's
                                      #   share with an InputContext) and the graph function
                                      #   load(key) -> (image (h, w, 3) uint8, target, ok, index)
    source.summary(split)             # what data.json says of the split
    source.samples(split)             # [(index, image RGB, target)] of the fixed sample

Targets per task, the same from every format of that task:
  classification: label int32 (index into class_names)
  detection: {"boxes": (G, 4) float32 [ymin, xmin, ymax, xmax] normalized, "labels": (G,) int32
    1..K, "crowd": (G,) bool}
  segmentation: label map (h, w) uint8 class indices, 255 = ignore
`ok` is False for a file that cannot be read (the image is then a (1, 1, 3) stand-in): training
filters it out, evaluation leaves the example out and reports the file.

The readers stay where they were (`coco.read_coco`, `segmentation.read_segmentation`,
`image_folder.list_image_folder`, `tfds_reader.load_tfds`); a source only puts one of them behind
this surface.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilevision.data.image_folder import DatasetError
from mobilevision.data.segmentation import IGNORE_LABEL

_EMPTY_IMAGE = np.zeros((1, 1, 3), np.uint8)
_EMPTY_LABEL = np.full((1, 1), IGNORE_LABEL, np.uint8)


def _where(cfg) -> str:
    return cfg.get("_source") or "config"


class Source:
    """What every source shares: the config, the per-split cache, the class-count check."""

    #: True when `examples` yields keys read only by `load` (file rows, record indices): the whole
    #: split is shuffled and sharded before anything is read. False for TFDS, whose keys are the
    #: examples themselves (sharded by `tfds.even_splits`, shuffled in a buffer).
    shuffle_keys = True

    def __init__(self, cfg):
        self.cfg = cfg
        self._records = {}

    def records(self, split: str):
        if split not in self._records:
            self._records[split] = self._read(split)
        return self._records[split]

    def _read(self, split: str):
        raise NotImplementedError

    def _check_count(self, names, where) -> None:
        n = self.cfg.model.num_classes
        if len(names) != n:
            raise ValueError(f"{_where(self.cfg)}: model.num_classes is {n} but {where} has "
                             f"{len(names)} classes ({', '.join(names[:10])}"
                             f"{', ...' if len(names) > 10 else ''})")

    def samples(self, split: str) -> list:
        """[(index, image (h, w, 3) uint8 RGB, target)] of the split's fixed sample (evenly
        spread over it, the same every run); unreadable files are left out."""
        from mobilevision import plots
        from mobilevision.data.decode import ImageDecodeError, read_image

        out = []
        for i in plots.sample_indices(self.size(split)):
            try:
                out.append((i, read_image(self.path(split, i)), self.target(split, i)))
            except ImageDecodeError:
                continue
        return out

    def size(self, split: str) -> int:
        return len(self.records(split))


# Classification ---------------------------------------------------------------------------------


class ClassFolders(Source):
    """`root/<split>/<class>/<image>`: the classes are the training split's folders."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self._names = None

    @property
    def class_names(self) -> list[str]:
        if self._names is None:
            from mobilevision.data.image_folder import list_image_folder

            d = self.cfg.data
            names = list_image_folder(Path(d.root) / d.train_split)[2]
            self._check_count(names, f"{Path(d.root) / d.train_split}")
            self._names = names
        return self._names

    def _read(self, split):
        """-> (paths, labels) of the split's class folders."""
        from mobilevision.data.image_folder import list_image_folder

        paths, labels, _ = list_image_folder(Path(self.cfg.data.root) / split, self.class_names)
        return paths, labels

    def size(self, split):
        return len(self.records(split)[0])

    def path(self, split, i):
        return self.records(split)[0][i]

    def target(self, split, i):
        return self.records(split)[1][i]

    def examples(self, split, input_context=None):
        import tensorflow as tf

        from mobilevision.data.pipeline import decode_file, image_files

        paths, labels = self.records(split)
        n = len(paths)
        keys = tf.data.Dataset.from_tensor_slices(
            (image_files(paths, self.cfg.data.decode), np.asarray(labels, np.int32),
             np.arange(n, dtype=np.int32)))

        def load(row, label, index):
            image, ok = decode_file(row)
            return image, label, ok, index

        return keys, load, n

    def summary(self, split):
        """Images per class."""
        paths, labels = self.records(split)
        counts = np.bincount(np.asarray(labels, np.int64), minlength=len(self.class_names))
        return {"images": len(paths), "images_per_class": dict(zip(self.class_names,
                                                                   counts.tolist()))}


class TfdsClassification(Source):
    """A TFDS image classification dataset prepared in `data.tfds.data_dir`."""

    shuffle_keys = False

    @property
    def class_names(self) -> list[str]:
        d = self.cfg.data
        names = list(self._info().features[d.tfds.label_key].names)
        self._check_count(names, f"TFDS {d.tfds.name}")
        return names

    def _info(self, split=None):
        from mobilevision.data.tfds_reader import load_tfds

        d = self.cfg.data
        return load_tfds(d.tfds.name, split or d.train_split, d.tfds.data_dir)[1]

    def size(self, split):
        return self._info(split).splits[split].num_examples

    def path(self, split, i):
        return f"{self.cfg.data.tfds.name}:{split}:{i}"

    def examples(self, split, input_context=None):
        import tensorflow as tf

        from mobilevision.data.tfds_reader import load_tfds

        d = self.cfg.data
        ds, info = load_tfds(d.tfds.name, split, d.tfds.data_dir, input_context)
        self._check_count(list(info.features[d.tfds.label_key].names), f"TFDS {d.tfds.name}")
        keys = ds.enumerate().map(lambda i, ex: (ex[d.tfds.image_key],
                                                 tf.cast(ex[d.tfds.label_key], tf.int32),
                                                 tf.cast(i, tf.int32)))

        def load(image, label, index):
            if image.shape[-1] == 1:
                image = tf.image.grayscale_to_rgb(image)
            return image, label, tf.constant(True), index

        return keys, load, self.size(split)

    def summary(self, split):
        """The split's size only: counting its classes would read it whole."""
        return {"images": self.size(split), "images_per_class": None}

    def samples(self, split):
        """Its first images."""
        from mobilevision import plots

        keys, load, _ = self.examples(split)
        return [(int(i), image, int(label)) for image, label, _, i in
                keys.take(plots.SAMPLES).map(load).as_numpy_iterator()]


# Detection --------------------------------------------------------------------------------------


class _Boxes(Source):
    """What the two detection sources share: records of `coco.ImageRecord` in a `CocoDataset`,
    whose `instances` are COCOeval's ground truth."""

    @property
    def class_names(self) -> list[str]:
        return self.records(self.cfg.data.train_split).category_names

    def size(self, split):
        return len(self.records(split).records)

    def path(self, split, i):
        return self.records(split).records[i].path

    def _checked(self, ds):
        if ds.num_classes != self.cfg.model.num_classes:
            raise ValueError(f"{_where(self.cfg)}: model.num_classes is "
                             f"{self.cfg.model.num_classes} but {ds.instances.source} has "
                             f"{ds.num_classes} categories")
        return ds

    def target(self, split, i):
        r = self.records(split).records[i]
        return {"boxes": r.boxes, "labels": r.labels, "crowd": r.iscrowd}

    def summary(self, split):
        """Objects per class (crowd regions counted apart), images without objects, and the
        boxes, annotations and files the reader dropped, clipped or skipped, with reasons."""
        coco = self.records(split)
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


class CocoBoxes(_Boxes):
    """A COCO instances JSON and its image folder (`data.coco.*` templates under data.root)."""

    def _read(self, split):
        from mobilevision.data.coco import read_coco

        d = self.cfg.data
        root = Path(d.root)
        return self._checked(read_coco(root / d.coco.annotations.format(split=split),
                                       root / d.coco.images.format(split=split),
                                       skip_invalid=d.skip_invalid))

    def examples(self, split, input_context=None):
        import tensorflow as tf

        from mobilevision.data.pipeline import decode_file, image_files

        records = self.records(split).records
        n = len(records)
        lengths = [len(r.boxes) for r in records]

        def flat(key, dtype, shape):
            if not n:
                return np.zeros(shape, dtype)
            return np.concatenate([getattr(r, key).astype(dtype).reshape(shape) for r in records])

        def ragged(values):
            return tf.RaggedTensor.from_row_lengths(values, lengths)

        keys = tf.data.Dataset.from_tensor_slices({
            "image": image_files([r.path for r in records], self.cfg.data.decode),
            "index": np.arange(n, dtype=np.int32),
            "boxes": ragged(flat("boxes", np.float32, (-1, 4))),
            "labels": ragged(flat("labels", np.int32, (-1,))),
            "crowd": ragged(flat("iscrowd", bool, (-1,)))})

        def load(row):
            image, ok = decode_file(row["image"])
            return image, {"boxes": row["boxes"], "labels": row["labels"],
                           "crowd": row["crowd"]}, ok, row["index"]

        return keys, load, n


class TfdsBoxes(_Boxes):
    """A TFDS detection dataset (e.g. coco/2017) prepared in `data.tfds.data_dir`; the COCOeval
    ground truth is rebuilt from the split (`tfds_detection`)."""

    shuffle_keys = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self._examples = {}

    def _read(self, split):
        from mobilevision.data.tfds_detection import tfds_detection

        d = self.cfg.data
        self._examples[split], ds = tfds_detection(d.tfds.name, split, d.tfds.data_dir,
                                                   image_key=d.tfds.image_key)
        return self._checked(ds)

    def examples(self, split, input_context=None):
        import tensorflow as tf

        d = self.cfg.data
        self.records(split)  # reads the split (and its examples) once
        examples = self._examples[split]
        if input_context is not None:  # this worker's share, read alone
            from mobilevision.data.tfds_reader import load_tfds

            examples = load_tfds(d.tfds.name, split, d.tfds.data_dir, input_context)[0]

        def key(index, ex):
            objects = ex["objects"]
            return (ex[d.tfds.image_key], {
                "boxes": tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4]),
                "labels": tf.cast(objects["label"], tf.int32) + 1,
                "crowd": tf.cast(objects["is_crowd"], tf.bool)}, tf.cast(index, tf.int32))

        def load(image, target, index):
            return image, target, tf.constant(True), index

        return examples.enumerate().map(key), load, self.size(split)

    def samples(self, split):
        """Its first images."""
        from mobilevision import plots

        keys, _, _ = self.examples(split)
        return [(int(i), image, self.target(split, int(i)))
                for image, _, i in keys.take(plots.SAMPLES).as_numpy_iterator()]


# Segmentation -----------------------------------------------------------------------------------


class _LabelMaps(Source):
    """What the segmentation sources share: a checked `SegmentationDataset` of the split, read by
    `segmentation.read_segmentation`, and a loader that decodes image and label map in the graph
    (data.decode graph) or with Pillow (python)."""

    fmt = ""

    @property
    def class_names(self) -> list[str]:
        return self.records(self.cfg.data.train_split).class_names

    def _class_names_from_config(self):
        return None

    def _read(self, split):
        from mobilevision.data.segmentation import read_segmentation

        d = self.cfg.data
        ds = read_segmentation(
            self.fmt, d.root, split, class_names=self._class_names_from_config(),
            voc={"images": d.voc.images, "masks": d.voc.masks, "list": d.voc.list},
            folder={"images": d.folder.images, "masks": d.folder.masks},
            coco={"images": d.coco.images, "annotations": d.coco.annotations},
            skip_invalid=d.skip_invalid)
        if ds.num_classes != self.cfg.model.num_classes:
            names = ds.class_names
            raise ValueError(f"{_where(self.cfg)}: model.num_classes is "
                             f"{self.cfg.model.num_classes} but {ds.source} has {len(names)} "
                             f"classes, background included ({', '.join(names[:10])}"
                             f"{', ...' if len(names) > 10 else ''})")
        if ds.skipped:
            print(f"skipped {len(ds.skipped)} invalid example(s) of split '{split}' "
                  f"(data.skip_invalid)")
        return ds

    def size(self, split):
        return len(self.records(split).records)

    def path(self, split, i):
        return self.records(split).records[i].path

    def samples(self, split):
        from mobilevision import plots
        from mobilevision.data.decode import ImageDecodeError
        from mobilevision.data.segmentation import load_example

        data = self.records(split)
        out = []
        for i in plots.sample_indices(len(data.records)):
            try:
                image, label = load_example(data.records[i], len(data.class_names))
            except ImageDecodeError:
                continue
            out.append((i, image, label))
        return out

    def examples(self, split, input_context=None):
        import tensorflow as tf

        n = self.size(split)
        load = self._graph_loader(split) if self.cfg.data.decode == "graph" \
            else self._python_loader(split)
        return tf.data.Dataset.from_tensor_slices(np.arange(n, dtype=np.int32)), load, n

    def _python_loader(self, split):
        """index -> (image, label, ok, index) read by Pillow (`load_example`) in Python."""
        import tensorflow as tf

        from mobilevision.data.decode import ImageDecodeError
        from mobilevision.data.segmentation import load_example
        from mobilevision.data.skips import SKIPPED

        records, k = self.records(split).records, self.cfg.model.num_classes

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
            return image, label, ok, index

        return load

    def _graph_loader(self, split):
        """index -> (image, label, ok, index) decoded in the graph from the verified files
        (`pipeline.image_files`, `verify_label_maps`): a palette or 16-bit label map through its
        8-bit grayscale copy, so the indices stay exact. COCO records paint their label maps from
        polygons, in Python (`coco_label_map`)."""
        import tensorflow as tf

        from mobilevision.data.graph_decode import graph_decode_label
        from mobilevision.data.pipeline import decode_file, image_files, read_verified
        from mobilevision.data.segmentation import coco_label_map
        from mobilevision.data.verify import verify_label_maps

        records = self.records(split).records
        images = {k: tf.constant(v) for k, v in
                  image_files([r.path for r in records], "graph").items()}
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
            return image, tf.ensure_shape(label, [None, None]), ok, index

        return load

    def summary(self, split):
        """Pixels per class (label maps; COCO annotations: objects per class), images without
        any object, and the examples and files the reader skipped, with reasons."""
        data = self.records(split)
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


class _ClassesFile(_LabelMaps):
    def _class_names_from_config(self):
        from mobilevision.data.segmentation import read_class_names

        d = self.cfg.data
        path = Path(d.root) / d.classes_file if d.classes_file else None
        if path is not None and path.is_file():
            return read_class_names(path)
        if self.fmt == "voc" and d.classes_file in (None, "classes.txt"):
            return None  # the 21 PASCAL VOC classes
        raise DatasetError(f"{path or d.root}: class list not found (data.classes_file: one class "
                           f"name a line, background first)")


class VocMasks(_ClassesFile):
    """The PASCAL VOC layout: `data.voc.*` (JPEGImages, SegmentationClass palette PNGs, the
    split's id list); classes from data.classes_file, else VOC's 21."""
    fmt = "voc"


class MaskFolders(_ClassesFile):
    """An image folder and a label-map folder per split (`data.folder.*`), paired by stem;
    classes from data.classes_file."""
    fmt = "folder"


class CocoMasks(_LabelMaps):
    """A COCO instances JSON whose polygons and RLEs are painted into label maps (categories
    become classes 1..K after the background)."""
    fmt = "coco"


def _report_misfit(path):
    """A graph op: print that `path`'s image and label map no longer have one size; -> False."""
    import sys

    import tensorflow as tf

    report = tf.print(tf.strings.join(["mobilevision: skipped ", path, " - its image and label "
                                       "map are no longer the same size (changed since the split "
                                       "was read)"]), output_stream=sys.stderr)
    with tf.control_dependencies([report]):
        return tf.constant(False)


# (task, data.format) -> source. config.py checks that the pair is one of these.
SOURCES = {
    ("classification", "folder"): ClassFolders,
    ("classification", "tfds"): TfdsClassification,
    ("detection", "coco"): CocoBoxes,
    ("detection", "tfds"): TfdsBoxes,
    ("segmentation", "voc"): VocMasks,
    ("segmentation", "folder"): MaskFolders,
    ("segmentation", "coco"): CocoMasks,
}


def source_for(cfg) -> Source:
    """The source of `cfg.data` for `cfg.task`."""
    key = (cfg.task, cfg.data.format)
    if key not in SOURCES:
        from mobilevision.config import ConfigError

        formats = [f for t, f in SOURCES if t == cfg.task]
        raise ConfigError(f"{_where(cfg)}: data.format '{cfg.data.format}' is not a {cfg.task} "
                          f"format; choose one of {', '.join(formats)}")
    return SOURCES[key](cfg)
