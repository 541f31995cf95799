"""Detection data from a TFDS dataset prepared in a local data_dir (e.g. `coco/2017`).

TFDS stores COCO with contiguous labels 0..79 and normalized [ymin, xmin, ymax, xmax] boxes; the
original category ids are not kept, so here category id = label + 1 and the COCOeval ground truth
is rebuilt from the split itself (boxes in pixels, crowd flags, areas as stored).
"""

from __future__ import annotations

import numpy as np

from mobilevision.data.coco import CocoDataset, CocoInstances, ImageRecord
from mobilevision.data.tfds_reader import load_tfds


def tfds_detection(name: str, split: str, data_dir, image_key="image", objects_key="objects"):
    """Returns (tf.data.Dataset of feature dicts, CocoDataset of the split's records whose
    `instances` hold the rebuilt COCO ground truth, checked as a COCO file is)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    ds, info = load_tfds(name, split, data_dir)
    names = list(info.features[objects_key]["label"].names)
    builder = tfds.builder(name, data_dir=data_dir)
    light = builder.as_dataset(split=split, shuffle_files=False,
                               decoders={image_key: tfds.decode.SkipDecoding()})
    records, images, annotations = [], [], []
    for index, ex in enumerate(light.as_numpy_iterator()):
        shape = tf.image.extract_jpeg_shape(ex[image_key]) if ex[image_key][:2] == b"\xff\xd8" \
            else tf.shape(tf.io.decode_image(ex[image_key], channels=3))
        height, width = int(shape[0]), int(shape[1])
        image_id = int(ex.get("image/id", index))
        objects = ex[objects_key]
        boxes = np.asarray(objects["bbox"], np.float32).reshape(-1, 4)
        labels = np.asarray(objects["label"], np.int32) + 1
        crowd = np.asarray(objects.get("is_crowd", np.zeros(len(labels), bool)), bool)
        path = f"{name}:{split}:{index}"
        records.append(ImageRecord(image_id, path, width, height, boxes, labels, crowd))
        images.append({"id": image_id, "file_name": path, "width": width, "height": height})
        for k, (y0, x0, y1, x1) in enumerate(boxes):
            w, h = float((x1 - x0) * width), float((y1 - y0) * height)
            area = float(objects["area"][k]) if "area" in objects else w * h
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(labels[k]), "iscrowd": int(crowd[k]),
                                "bbox": [float(x0 * width), float(y0 * height), w, h], "area": area})
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    return ds, CocoDataset(records, CocoInstances(gt, f"TFDS {name} split {split}"))
