"""COCO box evaluation: pycocotools `COCOeval` (bbox) behind a small, quiet interface.

    val = read_coco("data/coco/annotations/instances_val2017.json", "data/coco/val2017")
    evaluator = CocoEvaluator(val.instances)    # the reader's parsed file; GT indexed once
    metrics = evaluator.evaluate(detections)    # every epoch
    metrics["AP"], metrics["AP50"], metrics["per_class_AP"]["person"], metrics["summary_text"]
    recall, precision = evaluator.pr_curves(iou=0.5)   # the last evaluation's, from COCOeval

Detections are in the COCO results format: {"image_id", "category_id" (the dataset's own ids),
"bbox" [x, y, w, h] in original image pixels, "score"}; `detections_to_coco` makes them from the
detector's post-processed output (normalized [ymin, xmin, ymax, xmax], contiguous labels 1..K).

The -1 convention: a number is -1 exactly when COCOeval has nothing to average — no non-crowd
ground truth in that area range (e.g. `APs` on a dataset without small objects) or, in
`per_class_AP`, for that category. It is not a score; treat it as "not applicable". A category or
area range that has ground truth but no detections scores 0.0, so an epoch without any
detection gives 0.0 for every applicable number (and the same -1s as any other epoch, so logged
columns keep their meaning).
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np

# COCOeval.stats, in its order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _quiet(fn, *args, **kwargs):
    """Run fn with its stdout captured (pycocotools prints progress); return (result, text)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = fn(*args, **kwargs)
    return result, buffer.getvalue()


def _ground_truth(instances):
    """pycocotools' COCO of a CocoInstances' valid entries, indexed quietly, without reading the
    file again. COCOeval reads `area` and `iscrowd` (completed here: w * h, 0) and needs positive,
    unique annotation ids (it counts a match with id 0 as none, and createIndex keeps one
    annotation of a repeated id), so the annotations are shallow copies numbered 1..N."""
    from pycocotools.coco import COCO

    if "bbox" not in instances.fields:
        raise ValueError(f"{instances.source}: read without checking its boxes "
                         f"(fields={instances.fields}); box evaluation needs fields=('bbox',)")
    anns = (a for per_image in instances.annotations.values() for a in per_image)
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, **e._asdict()} for i, e in instances.images.items()],
        "annotations": [{**a, "id": n, "iscrowd": a.get("iscrowd", 0),
                         "area": a.get("area", float(a["bbox"][2]) * float(a["bbox"][3]))}
                        for n, a in enumerate(anns, start=1)],
        "categories": list(instances.categories)}
    _quiet(coco.createIndex)
    return coco


class CocoEvaluator:
    """Ground truth indexed once; `evaluate` many times (e.g. every N epochs)."""

    def __init__(self, instances):
        """instances: the split's CocoInstances (`read_coco(...).instances`, or
        `CocoInstances.read(path)`), whose boxes were checked as they were read."""
        self.coco_gt = _ground_truth(instances)
        self.source = instances.source
        self.category_ids = list(instances.category_ids)
        self.image_ids = list(instances.images)
        self.category_names = dict(zip(instances.category_ids, instances.category_names))
        self.precision = None   # the last evaluation's COCOeval eval["precision"]
        self.params = None      # and its params (iouThrs, recThrs, catIds, areaRng, maxDets)

    def _check_detections(self, detections, image_ids) -> list[dict]:
        """Validated plain-Python copies (loadRes mutates its input) of the detections on
        `image_ids`; detections on other images of the ground truth are left out."""
        known_images = set(self.coco_gt.imgs)
        known_cats = set(self.category_ids)
        out = []
        for i, d in enumerate(detections):
            try:
                image_id, category_id = int(d["image_id"]), int(d["category_id"])
                bbox = [float(v) for v in d["bbox"]]
                score = float(d["score"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"detection {i} {d!r:.120}: needs image_id, category_id, "
                                 f"bbox [x, y, w, h] and score") from None
            if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox + [score]):
                raise ValueError(f"detection {i}: bbox must be 4 finite numbers and score finite, "
                                 f"got bbox={d['bbox']!r}, score={d['score']!r}")
            if image_id not in known_images:
                raise ValueError(f"detection {i}: image_id {image_id} is not in {self.source}")
            if category_id not in known_cats:
                raise ValueError(f"detection {i}: category_id {category_id} is not among the "
                                 f"dataset's categories {self.category_ids[:10]}"
                                 f"{'...' if len(known_cats) > 10 else ''} (contiguous training "
                                 f"labels must be mapped back; see detections_to_coco)")
            if image_id in image_ids:
                out.append({"image_id": image_id, "category_id": category_id, "bbox": bbox,
                            "score": score})
        return out

    def _empty_results(self):
        """What loadRes would build for no detections (loadRes itself fails on [])."""
        from pycocotools.coco import COCO

        res = COCO()
        res.dataset = {"images": list(self.coco_gt.dataset["images"]),
                       "categories": list(self.coco_gt.dataset["categories"]),
                       "annotations": []}
        _quiet(res.createIndex)
        return res

    def evaluate(self, detections, image_ids=None) -> dict:
        """Run COCOeval (bbox) on `detections` (COCO results format, see the module docstring).

        image_ids: evaluate only these images (all of the ground truth's when None); detections
            on other images are ignored.

        Returns a dict: the twelve COCO numbers (METRIC_NAMES, floats, -1 = not applicable),
        per_class_AP {category name: AP@[.50:.95], area all, maxDets 100, -1 = no ground truth},
        per_class_AP50 (the same at IoU 0.5),
        num_images, num_detections (those evaluated) and summary_text (COCOeval's 12-line summary).
        """
        from pycocotools.cocoeval import COCOeval

        if image_ids is None:
            image_ids = self.image_ids
        else:
            image_ids = sorted({int(i) for i in image_ids})
            if not image_ids:
                raise ValueError("image_ids is empty: there is nothing to evaluate")
            unknown = [i for i in image_ids if i not in self.coco_gt.imgs]
            if unknown:
                raise ValueError(f"image_ids {unknown[:10]} are not in {self.source}")
        dets = self._check_detections(detections, set(image_ids))
        if dets:
            coco_dt, _ = _quiet(self.coco_gt.loadRes, dets)
        else:
            coco_dt = self._empty_results()

        coco_eval = COCOeval(self.coco_gt, coco_dt, iouType="bbox")
        coco_eval.params.imgIds = image_ids
        _quiet(coco_eval.evaluate)
        _quiet(coco_eval.accumulate)
        _, summary = _quiet(coco_eval.summarize)

        metrics = {name: float(v) for name, v in zip(METRIC_NAMES, coco_eval.stats)}
        self.precision, self.params = coco_eval.eval["precision"], coco_eval.params
        metrics["per_class_AP"] = self._per_class_ap()
        metrics["per_class_AP50"] = self._per_class_ap(iou=0.5)
        metrics["num_images"] = len(image_ids)
        metrics["num_detections"] = len(dets)
        metrics["summary_text"] = summary.rstrip("\n")
        return metrics

    def _class_precision(self, iou=None):
        """{category name: the last evaluation's precision (T or 1, R) for that category at all
        IoU thresholds or at `iou`, area 'all', 100 detections}, from COCOeval's own array.

        eval["precision"] is [T iou thresholds, R recall thresholds, K categories, A areas,
        M maxDets], -1 where a category has no ground truth; area index 0 is 'all', maxDets[-1]
        is 100."""
        if self.precision is None:
            raise ValueError("no evaluation yet: call evaluate() first")
        t = slice(None)
        if iou is not None:
            found = np.flatnonzero(np.isclose(self.params.iouThrs, iou))
            if not found.size:
                raise ValueError(f"IoU {iou} is not among COCOeval's thresholds "
                                 f"{self.params.iouThrs.tolist()}")
            t = slice(found[0], found[0] + 1)
        out = {}
        for k, cid in enumerate(self.params.catIds):
            name = self.category_names[cid]
            if name in out:                 # duplicate names: keep both, tell them apart
                name = f"{name} ({cid})"
            out[name] = self.precision[t, :, k, 0, -1]
        return out

    def _per_class_ap(self, iou=None) -> dict:
        """{category name: AP (averaged over IoU thresholds, or at `iou`), -1 = no ground truth}."""
        per_class = {}
        for name, p in self._class_precision(iou).items():
            p = p[p > -1]
            per_class[name] = float(np.mean(p)) if p.size else -1.0
        return per_class

    def pr_curves(self, iou: float = 0.5):
        """The last evaluation's precision-recall curves at `iou` (area 'all', 100 detections),
        read from COCOeval's `eval["precision"]`: (recall thresholds (R,) = params.recThrs,
        {category name: (R,) interpolated precision, or None for a category without ground
        truth}). The mean of a curve is that category's AP at `iou`."""
        curves = {name: (None if (p < 0).all() else p[0])
                  for name, p in self._class_precision(iou).items()}
        return np.asarray(self.params.recThrs), curves


def detections_to_coco(image_id, boxes, scores, labels, width, height, category_ids) -> list[dict]:
    """One image's post-processed detections -> COCO results dicts.

    Args:
        image_id: the dataset's image id.
        boxes: (D, 4) [ymin, xmin, ymax, xmax] normalized to 0..1 (clipped to the image here).
        scores: (D,). Rows with score <= 0 or label 0 are padding and are dropped.
        labels: (D,) contiguous training labels 1..K.
        width, height: the original image size in pixels.
        category_ids: the dataset's category ids; label i <-> category_ids[i - 1]
            (CocoDataset.category_ids).

    Returns:
        list of {"image_id", "category_id", "bbox" [x, y, w, h] in pixels, "score"}.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(f"boxes, scores and labels disagree in length: "
                         f"{len(boxes)}, {len(scores)}, {len(labels)}")
    keep = (scores > 0) & (labels > 0)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if labels.size and labels.max() > len(category_ids):
        raise ValueError(f"label {labels.max()} is out of range: there are "
                         f"{len(category_ids)} categories (labels 1..{len(category_ids)})")
    boxes = np.clip(boxes, 0.0, 1.0) * np.array([height, width, height, width], np.float64)
    cats = np.asarray(category_ids, np.int64)[labels - 1] if labels.size else labels
    return [{"image_id": int(image_id), "category_id": int(c),
             "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(s)}
            for (y0, x0, y1, x1), s, c in zip(boxes, scores, cats)]


__all__ = ["METRIC_NAMES", "CocoEvaluator", "detections_to_coco"]
