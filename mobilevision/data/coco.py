"""COCO instances JSON + image folder: parsed, validated and indexed once (`CocoInstances`), then
read into per-image box records (`read_coco`). The segmentation reader (`read_coco_segmentation`)
and COCOeval (`CocoEvaluator`) take the same object, so one bad input gets one message.

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
from typing import NamedTuple

import numpy as np

from mobilevision.data.decode import ImageDecodeError, image_size
from mobilevision.data.image_folder import DatasetError
from mobilevision.data.skips import SKIPPED


class ImageEntry(NamedTuple):
    """A valid entry of the file's `images`."""

    file_name: str
    width: int
    height: int


class CocoInstances:
    """A COCO instances file, parsed, validated and indexed once.

    Attributes:
        source: the file (or where a dict came from), named in every message.
        fields: the annotation fields that were checked (see `__init__`).
        categories: the category dicts, sorted by id; category_ids, category_names in that
            order; label_of {category id: contiguous label 1..K}.
        images: {image id: ImageEntry} of the valid image entries, in image-id order.
        annotations: {image id: [annotation dicts of that image]}, the valid ones, in file order.
        skipped: {what: reason} of the entries left out with skip_invalid ("annotation 7",
            "image 2", "image entry {...}").
        unreadable: {file: reason} of the image files `image_files` found it cannot decode
            (also recorded in SKIPPED, the run's log).
    """

    def __init__(self, data, source, *, fields=("bbox",), skip_invalid: bool = False):
        """data: the parsed JSON (kept, not copied). source: named in messages.

        fields: the annotation fields the caller reads, checked on every annotation: "bbox"
            (4 finite numbers [x, y, w, h]) and "segmentation" (polygons or an RLE that can be
            painted on its image; an annotation without one is box-only and kept).
        A file without the lists `images`, `annotations` and `categories`, or with a category
        without an integer id or two with the same id, is a DatasetError. An image entry without
        id, file_name and a positive size, or an annotation with an unknown image or category id
        or a bad field, is `invalid`: a DatasetError naming the file and the entry, or with
        skip_invalid left out and recorded in `skipped`."""
        self.source, self.fields = os.fspath(source), tuple(fields)
        self.skip_invalid, self.skipped, self.unreadable = skip_invalid, {}, {}
        for key in ("images", "annotations", "categories"):
            if not isinstance(data, dict) or not isinstance(data.get(key), list):
                raise DatasetError(f"{self.source}: expected a COCO instances file with a list "
                                   f"under '{key}'")
        seen = set()
        for category in data["categories"]:
            cid = category.get("id") if isinstance(category, dict) else None
            if not isinstance(cid, int) or isinstance(cid, bool):
                raise DatasetError(f"{self.source}: category {category!r:.80} needs an integer 'id'")
            if cid in seen:  # two names for one label would merge two classes
                raise DatasetError(f"{self.source}: category id {cid} appears more than once")
            seen.add(cid)
        self.categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in self.categories]
        self.category_names = [str(c.get("name", c["id"])) for c in self.categories]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

        images = {}
        for img in data["images"]:
            try:
                entry = ImageEntry(str(img["file_name"]), int(img["width"]), int(img["height"]))
                if entry.width < 1 or entry.height < 1:
                    raise ValueError
                images[int(img["id"])] = entry
            except (KeyError, TypeError, ValueError):
                self.invalid(f"image entry {img!r:.80}",
                             "needs id, file_name, and a positive width and height")
        self.images = dict(sorted(images.items()))
        self.annotations: dict[int, list] = {i: [] for i in self.images}
        for index, ann in enumerate(data["annotations"]):
            problem = self._problem(ann)
            if problem:
                has_id = isinstance(ann, dict) and "id" in ann
                self.invalid(f"annotation {ann['id']}" if has_id else f"annotations[{index}]",
                             problem)
            else:
                self.annotations[ann["image_id"]].append(ann)

    @classmethod
    def read(cls, path, **kwargs) -> CocoInstances:
        """The instances file at `path` (kwargs: see `__init__`); a DatasetError naming it when
        it is missing or not JSON."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DatasetError(f"{path}: annotation file not found") from None
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        return cls(data, path, **kwargs)

    def invalid(self, what: str, reason: str) -> None:
        """An entry that cannot be used: DatasetError '<source>: <what>: <reason>', or with
        skip_invalid recorded in `skipped`."""
        if not self.skip_invalid:
            raise DatasetError(f"{self.source}: {what}: {reason}")
        self.skipped[what] = reason

    def _problem(self, ann) -> str | None:
        """Why an annotation cannot be used, or None."""
        if not isinstance(ann, dict):
            return "expected an object with image_id, category_id and its " + " and ".join(
                self.fields)
        image_id, cid = ann.get("image_id"), ann.get("category_id")
        if not isinstance(image_id, int) or image_id not in self.images:
            return f"image_id {image_id} is not in 'images'"
        if not isinstance(cid, int) or cid not in self.label_of:
            ids = self.category_ids
            return f"category_id {cid} is not among the categories {ids[:10]}" + (
                "..." if len(ids) > 10 else "")
        bbox = ann.get("bbox")
        if "bbox" in self.fields and not (isinstance(bbox, list) and len(bbox) == 4
                                          and _finite_numbers(bbox)):
            return f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"
        if "segmentation" in self.fields and ann.get("segmentation"):
            entry = self.images[image_id]
            return _segmentation_problem(ann["segmentation"], entry.height, entry.width)
        return None

    def image_files(self, image_dir, check_files: bool = True) -> dict[int, str]:
        """{image id: its file under image_dir} in image-id order, for the images whose file
        exists and is the size the JSON gives it (annotations are relative to that size; EXIF
        orientation is applied, as `read_image` does). A missing file or another size is
        `invalid`; a file that cannot be decoded is left out and recorded in SKIPPED, as every
        reader does. check_files=False trusts the JSON (about 0.15 ms a file saved)."""
        paths = {i: Path(image_dir) / e.file_name for i, e in self.images.items()}
        if not check_files:
            return {i: os.fspath(p) for i, p in paths.items()}
        for image_id, path in list(paths.items()):
            if not path.is_file():
                self.invalid(f"image {image_id}", f"file {path} not found")
                del paths[image_id]

        def size(path):
            try:
                return image_size(path)
            except ImageDecodeError as e:
                return e

        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            sizes = list(pool.map(size, paths.values()))
        kept = {}
        for (image_id, path), hw in zip(paths.items(), sizes):
            width, height = self.images[image_id].width, self.images[image_id].height
            if isinstance(hw, ImageDecodeError):
                SKIPPED.add(hw.path, hw.reason)
                self.unreadable[hw.path] = hw.reason
            elif tuple(hw) != (height, width):
                # A swap is what an EXIF rotation does to a photo annotated as stored.
                hint = (" (width and height swapped: if the photo has an EXIF rotation, give its "
                        "size and annotations as displayed, rotated)"
                        if tuple(hw) == (width, height) else "")
                self.invalid(f"image {image_id}",
                             f"file {path} is {hw[1]}x{hw[0]} (w x h) but the JSON gives "
                             f"{width}x{height}, the size its annotations are relative to{hint}")
            else:
                kept[image_id] = os.fspath(path)
        return kept


def _finite_numbers(values: list) -> bool:
    """Whether `values` are all finite ints or floats, as JSON gives them (bools and strings
    are not numbers here). Plain Python: COCO train holds 860k polygons. `v - v == 0` is
    False for inf and NaN."""
    return all((type(v) is float or type(v) is int) and v - v == 0 for v in values)


def _segmentation_problem(segm, h: int, w: int) -> str | None:
    """Why a COCO `segmentation` cannot be painted on an (h, w) image, or None. Cheap (nothing
    is decoded), and enough that painting it later cannot fail: pycocotools neither checks an
    RLE's size nor that its counts cover the image (short counts paint uninitialized memory)."""
    if isinstance(segm, list):
        numbers = all(isinstance(p, list) and _finite_numbers(p) for p in segm)
        return None if numbers else ("segmentation: expected polygons, lists of numbers "
                                     "[x1, y1, x2, y2, ...]")
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if size != [h, w]:
            return (f"segmentation: RLE of size {size!r} (h, w) on an image of {[h, w]} "
                    f"(its size in 'images')")
        try:
            if isinstance(counts, str):
                counts = _rle_string_counts(counts.encode("ascii"))
            ok = (isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)
                  and sum(counts) == h * w)
        except (UnicodeEncodeError, IndexError):
            ok = False
        return None if ok else (f"segmentation: RLE counts must be run lengths adding up to "
                                f"{h} x {w} = {h * w} pixels")
    return (f"segmentation of type {type(segm).__name__}: expected polygons or RLE "
            f"{{'size': [h, w], 'counts': ...}}")


def _rle_string_counts(s: bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' rleFrString: 5 bits a
    character, a continuation bit, and from the third run on a delta to the run two before)."""
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign extension
        counts.append(x + counts[-2] if len(counts) > 2 else x)
    return counts


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
    """The read split: records, the parsed file they came from and what was dropped."""

    records: list[ImageRecord]
    instances: CocoInstances     # categories, skipped entries, COCOeval's ground truth
    dropped: Counter = field(default_factory=Counter)   # reason -> number of boxes dropped
    clipped: int = 0                                    # boxes clipped to their image, kept

    @property
    def category_ids(self) -> list[int]:
        """training label i+1 <-> category_ids[i]"""
        return self.instances.category_ids

    @property
    def category_names(self) -> list[str]:
        return self.instances.category_names

    @property
    def skipped(self) -> dict:
        """what -> reason, for the images and annotations skipped with skip_invalid."""
        return self.instances.skipped

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label_to_category(self, labels) -> np.ndarray:
        """Contiguous labels 1..K -> the dataset's category ids."""
        return np.asarray(self.category_ids, np.int64)[np.asarray(labels, np.int64) - 1]


def read_coco(annotation_file, image_dir, *, skip_invalid: bool = False,
              check_files: bool = True) -> CocoDataset:
    """Read a COCO instances file into box records.

    Boxes are clipped to the image (counted in `clipped`); a box with zero or negative width or
    height, or none of it inside the image, is dropped and counted in `dropped`. An annotation
    with an unknown category or image id or a malformed bbox, an image entry without its size,
    an image whose file is missing, or whose file is not the size the JSON gives it (boxes are
    relative to that size; EXIF orientation is applied, as `read_image` does), is a DatasetError
    naming it, or with skip_invalid skipped and recorded in `skipped` (see CocoInstances). A file
    that cannot be decoded is dropped and recorded in SKIPPED, as every reader does. Images
    without annotations are kept (negatives, as the TF Object Detection API keeps them).

    check_files: check that each image file exists and read its size from its header (about
    0.15 ms a file); False trusts the JSON.
    Returns a CocoDataset with the records in image-id order.
    """
    coco = CocoInstances.read(annotation_file, fields=("bbox",), skip_invalid=skip_invalid)
    dropped: Counter = Counter()
    clipped = 0
    records = []
    for image_id, path in coco.image_files(image_dir, check_files).items():
        _, width, height = coco.images[image_id]
        rows = []
        for ann in coco.annotations[image_id]:
            x, y, w, h = (float(v) for v in ann["bbox"])
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
            rows.append((y0 / height, x0 / width, y1 / height, x1 / width,
                         coco.label_of[ann["category_id"]], bool(ann.get("iscrowd", 0))))
        records.append(ImageRecord(image_id, path, width, height,
                                   np.asarray([r[:4] for r in rows], np.float32).reshape(-1, 4),
                                   np.asarray([r[4] for r in rows], np.int32),
                                   np.asarray([r[5] for r in rows], bool)))
    return CocoDataset(records, coco, dropped, clipped)
