"""COCO instances JSON + image folder, read into per-image box records.

    root/<images dir>/<file_name>          e.g. data/coco/train2017/000000000009.jpg
    root/annotations/instances_<split>.json

Conventions: boxes in the records are [ymin, xmin, ymax, xmax] normalized to the image size;
labels are contiguous training ids 1..K (0 is background), mapped from the dataset's own
category ids (COCO's 1..90 with gaps) in ascending id order, and back with `category_ids`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilevision.data.decode import ImageDecodeError, image_size
from mobilevision.data.image_folder import DatasetError
from mobilevision.data.skips import SKIPPED


@dataclass
class ImageRecord:
    """One image: its file, size and (possibly empty) boxes."""

    image_id: int
    path: str
    width: int
    height: int
    boxes: np.ndarray        # (G, 4) float32 [ymin, xmin, ymax, xmax] in 0..1
    labels: np.ndarray       # (G,) int32 in 1..K
    iscrowd: np.ndarray      # (G,) bool: crowd regions, ignored in matching and by COCOeval


@dataclass
class CocoDataset:
    """The parsed split: records, the category mapping and what was dropped or skipped."""

    records: list[ImageRecord]
    category_ids: list[int]          # training label i+1 <-> category_ids[i]
    category_names: list[str]
    annotation_file: str
    dropped: Counter = field(default_factory=Counter)   # reason -> number of boxes dropped
    skipped: dict = field(default_factory=dict)         # what -> reason (images/annotations)
    clipped: int = 0                                    # boxes clipped to their image, kept

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label_to_category(self, labels) -> np.ndarray:
        """Contiguous labels 1..K -> the dataset's category ids."""
        return np.asarray(self.category_ids, np.int64)[np.asarray(labels, np.int64) - 1]


def load_instances_json(path: Path) -> dict:
    """The parsed COCO instances file at `path`; DatasetError naming it when it is missing, not
    JSON, lacks the lists `images`, `annotations` and `categories`, or has a category without an
    integer id or two with the same id."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: expected a COCO instances file with a list under "
                               f"'{key}'")
    seen = set()
    for category in data["categories"]:
        cid = category.get("id") if isinstance(category, dict) else None
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise DatasetError(f"{path}: category {category!r:.80} needs an integer 'id'")
        if cid in seen:  # two names for one label would merge two classes
            raise DatasetError(f"{path}: category id {cid} appears more than once")
        seen.add(cid)
    return data


def _check_sizes(records: list[ImageRecord], invalid) -> list[ImageRecord]:
    """The records whose file's header gives the size the JSON states. An undecodable file is
    recorded in SKIPPED and dropped; a size mismatch goes to `invalid(what, reason)`."""
    def size(record):
        try:
            return image_size(record.path)
        except ImageDecodeError as e:
            return e

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        sizes = list(pool.map(size, records))
    kept = []
    for record, hw in zip(records, sizes):
        if isinstance(hw, ImageDecodeError):
            SKIPPED.add(hw.path, hw.reason)
        elif tuple(hw) != (record.height, record.width):
            # A swap is what an EXIF rotation does to a photo annotated as stored.
            hint = (" (width and height swapped: if the photo has an EXIF rotation, give its size "
                    "and boxes as displayed, rotated)" if tuple(hw) == (record.width, record.height)
                    else "")
            invalid(f"image {record.image_id}",
                    f"file {record.path} is {hw[1]}x{hw[0]} (w x h) but the JSON gives "
                    f"{record.width}x{record.height}, the size its boxes are relative to{hint}")
        else:
            kept.append(record)
    return kept


def read_coco(annotation_file, image_dir, *, skip_invalid: bool = False,
              check_files: bool = True) -> CocoDataset:
    """Parse a COCO instances file.

    Boxes are clipped to the image (counted in `clipped`); a box with zero or negative width or
    height, or none of it inside the image, is dropped and counted in `dropped`. An annotation
    with an unknown category or image id or a malformed bbox, an image entry without its size,
    an image whose file is missing, or whose file is not the size the JSON gives it (boxes are
    relative to that size; EXIF orientation is applied, as `read_image` does), is a DatasetError
    naming it, or with skip_invalid skipped and recorded in `skipped`. A file that cannot be
    decoded is dropped and recorded in SKIPPED, as every reader does. Images without annotations
    are kept (negatives, as the TF Object Detection API keeps them).

    check_files: check that each image file exists and read its size from its header (about
    0.15 ms a file); False trusts the JSON.
    Returns a CocoDataset with the records in image-id order.
    """
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    data = load_instances_json(annotation_file)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    category_ids = [int(c["id"]) for c in cats]
    names = [str(c.get("name", c["id"])) for c in cats]
    to_label = {cid: i + 1 for i, cid in enumerate(category_ids)}
    dropped: Counter = Counter()
    skipped: dict = {}
    clipped = 0

    def invalid(what: str, reason: str):
        if not skip_invalid:
            raise DatasetError(f"{annotation_file}: {what}: {reason}")
        skipped[what] = reason

    images = {}
    for img in data["images"]:
        try:
            entry = (str(img["file_name"]), int(img["width"]), int(img["height"]))
            if entry[1] < 1 or entry[2] < 1:
                raise ValueError
            images[int(img["id"])] = entry
        except (KeyError, TypeError, ValueError):
            invalid(f"image entry {img!r:.80}",
                    "needs id, file_name, and a positive width and height")
    per_image: dict[int, list] = {i: [] for i in images}
    for ann in data["annotations"]:
        aid = ann.get("id")
        image_id = ann.get("image_id")
        if image_id not in images:
            invalid(f"annotation {aid}", f"image_id {image_id} is not in 'images'")
            continue
        cid = ann.get("category_id")
        if cid not in to_label:
            invalid(f"annotation {aid}", f"category_id {cid} is not among the categories "
                                         f"{category_ids[:10]}{'...' if len(category_ids) > 10 else ''}")
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)):
            invalid(f"annotation {aid}", f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
            continue
        _, width, height = images[image_id]
        x, y, w, h = (float(v) for v in bbox)
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if w <= 0 or h <= 0:
            dropped["zero or negative size"] += 1
            continue
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            dropped["outside the image"] += 1
            continue
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            clipped += 1
        per_image[image_id].append((y0 / height, x0 / width, y1 / height, x1 / width,
                                    to_label[cid], bool(ann.get("iscrowd", 0))))

    records = []
    for image_id, (file_name, width, height) in images.items():
        path = image_dir / file_name
        if check_files and not path.is_file():
            invalid(f"image {image_id}", f"file {path} not found")
            continue
        rows = per_image[image_id]
        arr = np.asarray([r[:4] for r in rows], np.float32).reshape(-1, 4)
        records.append(ImageRecord(image_id, os.fspath(path), width, height, arr,
                                   np.asarray([r[4] for r in rows], np.int32),
                                   np.asarray([r[5] for r in rows], bool)))
    if check_files:
        records = _check_sizes(records, invalid)
    records.sort(key=lambda r: r.image_id)
    return CocoDataset(records, category_ids, names, os.fspath(annotation_file), dropped, skipped,
                       clipped)
