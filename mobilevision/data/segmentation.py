"""Semantic segmentation datasets, read into per-image records of (image file, label source).

    voc     root/JPEGImages/<id>.jpg                  PASCAL VOC 2012
            root/SegmentationClass/<id>.png           palette ("P") PNG, read as class indices
            root/ImageSets/Segmentation/<split>.txt   one id a line
    coco    root/<images dir>/<file_name>             COCO instances JSON: polygons and RLE are
            root/annotations/instances_<split>.json   painted into one semantic label map
    folder  root/<split>/images/<stem>.<ext>          any image; its label map is
            root/<split>/masks/<stem>.png             the PNG of the same stem
            root/classes.txt                          class names, background first

Labels: 0 background, 1..K-1 the classes, 255 ignored by the loss and the metrics (VOC's void
boundaries, COCO crowd regions). A label map is a single-channel image of indices ("P" or "L",
also 16-bit gray); an RGB colour mask is refused rather than guessed at.

Problems in the data are errors that name the file: a listed image or label map that is missing,
an image without its label map (or the reverse, in folder layout), a label map whose size differs
from its image, a label value that is neither a class index nor 255. With `skip_invalid` they are
skipped and recorded instead. An image or label file that cannot be decoded is skipped and
reported (`mobilevision.data.skips.SKIPPED`), as every other reader does.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mobilevision.data.coco import CocoInstances
from mobilevision.data.decode import ImageDecodeError, image_size, is_image_file, read_image
from mobilevision.data.image_folder import DatasetError
from mobilevision.data.skips import SKIPPED

IGNORE_LABEL = 255

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")

_WORKERS = 4


@dataclass
class SegRecord:
    """One image and where its labels come from: a label PNG (voc, folder) or COCO objects."""

    image_id: str
    path: str
    mask_path: str | None = None
    height: int | None = None     # of the image (from its header, or the COCO JSON)
    width: int | None = None
    objects: list = field(default_factory=list)  # COCO: (label 1..K, segmentation, iscrowd, area)
    source: str = ""              # the COCO annotation file, for messages
    pixels: np.ndarray | None = None  # (K + 1,) pixels of each class, then the ignored ones
                                      # (label maps read by check_records)


@dataclass
class SegmentationDataset:
    """A parsed split: records in a fixed order, class names (background first), skips."""

    records: list[SegRecord]
    class_names: list[str]
    source: str
    skipped: dict = field(default_factory=dict)  # path -> reason, for skip_invalid
    unreadable: dict = field(default_factory=dict)  # path -> reason: files that do not decode

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def read_class_names(path) -> list[str]:
    """Class names, one a line (blank lines dropped), background first."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise DatasetError(f"{path}: class list not found (one class name a line, background "
                           f"first)") from None
    names = [n for n in names if n]
    if len(names) < 2:
        raise DatasetError(f"{path}: class list needs the background and at least one class, "
                           f"got {names}")
    return names


def read_label_png(path, num_classes: int | None = None) -> np.ndarray:
    """A label map file -> (h, w) uint8 class indices.

    A palette PNG gives its indices, not its colours; a grayscale PNG its values. With
    `num_classes`, every value must be below it or be 255 (ignore).

    Raises DatasetError (missing file, colour image, value out of range) naming the file, or
    ImageDecodeError for a file that cannot be decoded.
    """
    name = os.fspath(path)
    try:
        with Image.open(name) as image:
            image.load()
            mode = image.mode
            values = np.array(image)
    except FileNotFoundError:
        raise DatasetError(f"{name}: label map not found") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ... on bad data
        raise ImageDecodeError(name, f"corrupt label map ({e})") from None
    if mode not in ("P", "L", "I", "I;16", "I;16L", "I;16B", "I;16N"):
        raise DatasetError(f"{name}: label map is a {mode} image; expected class indices in a "
                           f"palette (P) or grayscale (L) PNG")
    if num_classes is not None:
        bad = (values >= num_classes) & (values != IGNORE_LABEL)
        if bad.any():
            found = np.unique(values[bad])
            shown = ", ".join(str(int(v)) for v in found[:8]) + (", ..." if len(found) > 8 else "")
            raise DatasetError(f"{name}: label values {shown} are outside the {num_classes} "
                               f"classes 0..{num_classes - 1} (255 = ignore)")
    if values.dtype != np.uint8:
        if values.min() < 0 or values.max() > IGNORE_LABEL:
            raise DatasetError(f"{name}: label values must be 0..255, found {values.min()}.."
                               f"{values.max()}")
        values = values.astype(np.uint8)
    return values


# ------------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------------


def _missing(what: str, path, skip_invalid: bool, skipped: dict, hint: str = "") -> None:
    message = f"{path}: {what}{hint}"
    if not skip_invalid:
        raise DatasetError(message)
    skipped[str(path)] = what


def list_voc(root, split: str, images: str = "JPEGImages", masks: str = "SegmentationClass",
             list_file: str = "ImageSets/Segmentation/{split}.txt", *,
             skip_invalid: bool = False, skipped: dict | None = None) -> list[SegRecord]:
    """Records of a PASCAL VOC split, in list order. Every listed id needs
    `<images>/<id>.jpg` (or another image extension) and `<masks>/<id>.png`."""
    root = Path(root)
    skipped = {} if skipped is None else skipped
    listing = root / list_file.format(split=split)
    try:
        ids = [line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines()
               if line.strip()]
    except FileNotFoundError:
        raise DatasetError(f"{listing}: split list not found (expected the VOC layout "
                           f"{root}/{list_file.format(split='<split>')})") from None
    if not ids:
        raise DatasetError(f"{listing}: split list is empty")
    image_dir, mask_dir = root / images, root / masks
    records = []
    for image_id in ids:
        path = image_dir / f"{image_id}.jpg"
        if not path.is_file():
            alternatives = [image_dir / f"{image_id}{e}" for e in (".jpeg", ".png", ".JPG")]
            path = next((p for p in alternatives if p.is_file()), path)
        mask = mask_dir / f"{image_id}.png"
        if not path.is_file():
            _missing("image file not found", path, skip_invalid, skipped,
                     f" (listed as '{image_id}' in {listing})")
            continue
        if not mask.is_file():
            _missing("label map not found", mask, skip_invalid, skipped,
                     f" (the pair of {path}, listed in {listing})")
            continue
        records.append(SegRecord(image_id, str(path), str(mask)))
    return records


def list_mask_folder(image_dir, mask_dir, *, skip_invalid: bool = False,
                     skipped: dict | None = None) -> list[SegRecord]:
    """Records of an image folder and a label-map folder, paired by file stem, sorted."""
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    skipped = {} if skipped is None else skipped
    for folder, what in ((image_dir, "image"), (mask_dir, "label map")):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: {what} folder not found")
    images = {}
    for p in sorted(image_dir.iterdir()):
        if p.is_file() and is_image_file(p.name):
            if p.stem in images:
                raise DatasetError(f"{p}: two images named '{p.stem}' ({images[p.stem].name} "
                                   f"and {p.name}); the stem pairs an image with its label map")
            images[p.stem] = p
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.is_file() and p.suffix.lower() == ".png"}
    if not images:
        raise DatasetError(f"{image_dir}: no images (.jpg, .jpeg, .png, .bmp)")
    records = []
    for stem, path in images.items():
        if stem not in masks:
            _missing("label map not found", mask_dir / f"{stem}.png", skip_invalid, skipped,
                     f" (the pair of {path})")
            continue
        records.append(SegRecord(stem, str(path), str(masks[stem])))
    for stem in sorted(set(masks) - set(images)):
        _missing("label map without an image", masks[stem], skip_invalid, skipped,
                 f" (no {stem}.<jpg|png|...> in {image_dir})")
    return records


def read_coco_segmentation(annotation_file, image_dir, *, skip_invalid: bool = False,
                           skipped: dict | None = None, unreadable: dict | None = None,
                           check_files: bool = True) -> tuple[list[SegRecord], list[str]]:
    """Records of a COCO instances file whose objects are painted into semantic label maps.

    Categories sorted by id become the contiguous labels 1..K (0 background); the class names
    are ["background", *category names]. Every image is kept, also one without annotations.
    An image entry without its size, a missing image file or one of another size than the JSON
    gives, an annotation with an unknown category or image id, or a segmentation that cannot be
    painted on its image (not polygons of numbers, or an RLE of another size or whose counts do
    not cover it) is a DatasetError naming it, or with skip_invalid skipped and recorded in
    `skipped`: found here, before training, rather than inside the tf.data pipeline. The file
    is parsed and checked by `CocoInstances`, as for detection; check_files: see `read_coco`.
    Image files that cannot be decoded are left out and recorded in `unreadable` (and SKIPPED).
    Returns (records in image-id order, class names)."""
    coco = CocoInstances.read(annotation_file, fields=("segmentation",), skip_invalid=skip_invalid)
    records = []
    for image_id, path in coco.image_files(image_dir, check_files).items():
        entry = coco.images[image_id]
        # A box-only annotation has no pixels to label.
        objects = [(coco.label_of[a["category_id"]], a["segmentation"], bool(a.get("iscrowd", 0)),
                    float(a.get("area", 0.0))) for a in coco.annotations[image_id]
                   if a.get("segmentation")]
        records.append(SegRecord(str(image_id), path, None, entry.height, entry.width, objects,
                                 coco.source))
    if skipped is not None:
        skipped.update(coco.skipped)
    if unreadable is not None:
        unreadable.update(coco.unreadable)
    return records, ["background", *coco.category_names]


def _decode_segmentation(segm, h: int, w: int, where: str) -> np.ndarray:
    """COCO polygons, uncompressed or compressed RLE -> (h, w) bool mask."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segm, list):
            polygons = [p for p in segm if len(p) >= 6]  # 4 numbers would read as a box
            if not polygons:
                return np.zeros((h, w), bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, h, w)
        elif isinstance(segm, dict):
            rle = dict(segm)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        else:
            raise TypeError(f"unsupported segmentation of type {type(segm).__name__}")
        mask = mask_utils.decode(rle)
    except Exception as e:
        raise DatasetError(f"{where}: cannot decode its segmentation ({e})") from None
    if mask.shape[:2] != (h, w):
        raise DatasetError(f"{where}: RLE of size {mask.shape[:2]} for an image of {(h, w)}")
    return mask.astype(bool)


def coco_label_map(record: SegRecord) -> np.ndarray:
    """(h, w) uint8 label map of a COCO record: objects painted largest first (a smaller object
    in front of a larger one keeps its pixels), then crowd regions set to 255 where no single
    object was painted."""
    h, w = record.height, record.width
    label = np.zeros((h, w), np.uint8)
    painted = np.zeros((h, w), bool)
    crowd = np.zeros((h, w), bool)
    for lab, segm, iscrowd, _ in sorted(record.objects, key=lambda o: -o[3]):
        mask = _decode_segmentation(segm, h, w, f"{record.source}: an annotation of image "
                                                f"{record.image_id}")
        if iscrowd:
            crowd |= mask
        else:
            label[mask] = lab
            painted |= mask
    label[crowd & ~painted] = IGNORE_LABEL
    return label


def load_label(record: SegRecord, num_classes: int) -> np.ndarray:
    """The (h, w) uint8 label map of a record."""
    if record.mask_path is None:
        return coco_label_map(record)
    return read_label_png(record.mask_path, num_classes)


def load_example(record: SegRecord, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (h, w, 3) uint8 RGB, label (h, w) uint8). Raises ImageDecodeError for an
    undecodable file, DatasetError when the two sizes differ or a label is out of range."""
    image = read_image(record.path)
    label = load_label(record, num_classes)
    if label.shape != image.shape[:2]:
        raise DatasetError(_size_message(record, image.shape[:2], label.shape))
    return image, label


def _size_message(record, image_hw, label_hw) -> str:
    if record.mask_path is not None:
        return (f"{record.mask_path}: label map is {label_hw[1]}x{label_hw[0]} (w x h) but its "
                f"image {record.path} is {image_hw[1]}x{image_hw[0]}")
    return (f"{record.path}: image is {image_hw[1]}x{image_hw[0]} (w x h) but {record.source} "
            f"gives it {label_hw[1]}x{label_hw[0]}, the size its label map is painted at")


def check_records(records: list[SegRecord], num_classes: int, *, skip_invalid: bool = False,
                  skipped: dict | None = None, unreadable: dict | None = None) -> list[SegRecord]:
    """Validate every label-map record (voc, folder) before training: read each image's size from
    its header (and fill in `height`, `width`), decode its label PNG and check its size and
    values, and count its pixels per class (`pixels`, for the data report). (COCO records are
    checked as they are read, by `CocoInstances.image_files`.)

    Returns the records to use. A file that cannot be decoded is dropped and recorded in
    SKIPPED and `unreadable`; a size mismatch or bad label value is a DatasetError naming the
    file (the first in record order), or with skip_invalid dropped and recorded in `skipped`."""
    skipped = {} if skipped is None else skipped
    unreadable = {} if unreadable is None else unreadable

    def check(record):
        try:
            hw = image_size(record.path)
            label = read_label_png(record.mask_path, num_classes)
            if tuple(label.shape) != tuple(hw):
                raise DatasetError(_size_message(record, hw, label.shape))
            values = np.where(label == IGNORE_LABEL, num_classes, label).reshape(-1)
            return record, hw, np.bincount(values, minlength=num_classes + 1), None
        except (ImageDecodeError, DatasetError) as e:
            return record, None, None, e

    with ThreadPoolExecutor(max_workers=min(_WORKERS, os.cpu_count() or 1)) as pool:
        results = list(pool.map(check, records))
    kept, errors = [], []
    for record, hw, pixels, error in results:
        if isinstance(error, ImageDecodeError):
            SKIPPED.add(error.path, error.reason)
            unreadable[error.path] = error.reason
        elif error is not None:
            errors.append((record, error))
        else:
            record.height, record.width, record.pixels = int(hw[0]), int(hw[1]), pixels
            kept.append(record)
    if errors and not skip_invalid:
        more = f" (and {len(errors) - 1} more bad example(s))" if len(errors) > 1 else ""
        raise DatasetError(f"{errors[0][1]}{more}")
    for record, error in errors:
        skipped[record.mask_path or record.path] = str(error)
    return kept


def read_segmentation(fmt: str, root, split: str, *, class_names=None, voc=None, folder=None,
                      coco=None, skip_invalid: bool = False, check: bool = True) -> SegmentationDataset:
    """Read a split in format "voc", "coco" or "folder" into a checked SegmentationDataset.

    Args:
      root: dataset root. split: the split name substituted into the templates below.
      class_names: names, background first (voc and folder; COCO takes its categories). For voc
        None means the 21 VOC classes.
      voc: {"images", "masks", "list"} folders / list template under root (VOC defaults).
      folder: {"images", "masks"} folder templates under root ("{split}/images", ...).
      coco: {"images", "annotations"} templates under root.
      check: check every image's size against its label map or the COCO JSON, and label values
        (`check_records`, `CocoInstances.image_files`); False trusts the files.
    """
    root = Path(root)
    skipped: dict = {}
    unreadable: dict = {}
    if fmt == "voc":
        v = {"images": "JPEGImages", "masks": "SegmentationClass",
             "list": "ImageSets/Segmentation/{split}.txt", **(voc or {})}
        records = list_voc(root, split, v["images"], v["masks"], v["list"],
                           skip_invalid=skip_invalid, skipped=skipped)
        names = list(class_names or VOC_CLASSES)
        source = str(root / v["list"].format(split=split))
    elif fmt == "folder":
        f = {"images": "{split}/images", "masks": "{split}/masks", **(folder or {})}
        if not class_names:
            raise DatasetError(f"{root}: the folder layout needs a class list (data.classes_file)")
        records = list_mask_folder(root / f["images"].format(split=split),
                                   root / f["masks"].format(split=split),
                                   skip_invalid=skip_invalid, skipped=skipped)
        names = list(class_names)
        source = str(root / f["images"].format(split=split))
    elif fmt == "coco":
        c = {"images": "{split}", "annotations": "annotations/instances_{split}.json", **(coco or {})}
        ann = root / c["annotations"].format(split=split)
        records, names = read_coco_segmentation(ann, root / c["images"].format(split=split),
                                                skip_invalid=skip_invalid, skipped=skipped,
                                                unreadable=unreadable, check_files=check)
        source = str(ann)
    else:
        raise ValueError(f"unknown segmentation data format {fmt!r}; expected voc, coco or folder")
    if len(names) > IGNORE_LABEL:
        raise DatasetError(f"{source}: {len(names)} classes; label maps hold at most 255 "
                           f"(255 is the ignore label)")
    if check and fmt != "coco":  # COCO images were checked as they were read
        records = check_records(records, len(names), skip_invalid=skip_invalid, skipped=skipped,
                                unreadable=unreadable)
    if not records:
        raise DatasetError(f"{source}: no usable examples in split '{split}'")
    return SegmentationDataset(records, names, source, skipped, unreadable)
