"""Experiment configuration: defaults in code, a YAML file over them, `key=value` over both.

    cfg = load_config("shapes_classifier.yaml", overrides=["train.epochs=3"])
    cfg.model.backbone.alpha      # 0.35
    cfg["train"]["epochs"]        # 3

Every key that exists is declared in `SCHEMA` below with its default and type. An unknown key,
a value of the wrong type or a file that does not exist is a `ConfigError` naming the key, the
YAML file (or the override) and, for unknown keys, the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from mobilevision.version import __version__

TASKS = ("classification", "detection", "segmentation")
DATA_FORMATS = ("folder", "tfds", "coco", "voc")
DECODE_MODES = ("graph", "python")  # see mobilevision/data/pipeline.py
SYNTHETIC = ("shapes",)
OPTIMIZERS = ("rmsprop", "sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "exponential", "cosine")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


class ConfigError(ValueError):
    """A config problem, with the key and the file (or override) it came from in the message."""


@dataclass(frozen=True)
class Field:
    """One config key: its default and what values it accepts.

    kind: "int", "float", "bool", "str", "size" (a list of two positive ints), "floats" (a list
    of numbers), "ints" (a list of integers), "strs" (a list of strings), "path" (a string; may
    not exist yet) or "file" (a string naming an existing file, checked after all overrides). `choices` restricts the value;
    `nullable` allows null. "weights" and "backbone_weights" are strings checked by
    `_validate_transfer`.
    """

    default: Any
    kind: str
    choices: tuple | None = None
    nullable: bool = False
    help: str = ""


# Dotted key -> Field. Task issues add their own keys here; keep the list sorted by section.
SCHEMA: dict[str, Field] = {
    "task": Field("classification", "str", TASKS, help="which task builds the model and data"),
    "name": Field(None, "str", nullable=True, help="run name; defaults to the config file's stem"),
    "seed": Field(0, "int", help="seeds Python, NumPy, TensorFlow and the data order"),
    "output": Field(None, "path", nullable=True, help="run directory; default runs/<name>"),
    # model
    "model.input_size": Field([224, 224], "size", help="[height, width], multiples of 32"),
    "model.num_classes": Field(1000, "int"),
    "model.weights": Field(None, "weights", nullable=True,
                           help="the whole model's weights: a file, or a run folder (its best, "
                                "else last checkpoint); layers of other shapes (another class "
                                "count, another task's head) start fresh"),
    "model.backbone.name": Field("mobilenet_v2", "str",
                                 help="a name in mobilevision.backbones.BACKBONES"),
    "model.backbone.alpha": Field(1.0, "float", ALPHAS, help="width multiplier"),
    "model.backbone.output_stride": Field(32, "int", (8, 16, 32)),
    "model.backbone.weights": Field(
        None, "backbone_weights", nullable=True,
        help="'imagenet' (keras.applications' weights, downloaded once into Keras' cache) or a "
             "weights file (.h5, .weights.h5, .keras), loaded by layer name"
    ),
    "model.backbone.bn_momentum": Field(0.999, "float", help="BatchNorm moving-average momentum"),
    "model.backbone.trainable": Field(True, "bool"),
    "model.head.features": Field(None, "strs", nullable=True,
                                 help="backbone taps the head reads, finest first; null: the "
                                      "backbone's default for the task (MobileNetV2: classifier "
                                      "[out_relu], SSDLite [block_13_expand_relu, out_relu], "
                                      "DeepLabv3 [block_16_project])"),
    "model.head.dropout": Field(0.2, "float",
                                help="dropout before the classifier's `predictions` or DeepLab's logits"),
    # detection head (SSDLite); the reference recipe of ssdlite_mobilenet_v2_coco
    "model.head.bn_momentum": Field(0.9997, "float", help="BatchNorm momentum in the SSD / DeepLab head"),
    "model.head.anchors.min_scale": Field(0.2, "float"),
    "model.head.anchors.max_scale": Field(0.95, "float"),
    "model.head.anchors.aspect_ratios": Field([1.0, 2.0, 0.5, 3.0, 0.3333], "floats"),
    "model.head.iou_threshold": Field(0.5, "float", help="anchor matching IoU"),
    "model.head.loss": Field("softmax", "str", ("softmax", "focal"),
                             help="softmax with 3:1 hard negative mining, or sigmoid focal"),
    "model.head.neg_pos_ratio": Field(3.0, "float", help="hard negatives per positive (softmax)"),
    "model.head.nms_iou": Field(0.6, "float"),
    "model.head.score_threshold": Field(0.01, "float"),
    "model.head.max_detections": Field(100, "int"),
    "model.head.draw_threshold": Field(0.3, "float", help="predict: draw boxes scoring at least"),
    # segmentation head (DeepLabv3 on block_16_project; docs/paper.md, Table 7)
    "model.head.aspp": Field(True, "bool", help="DeepLabv3: add the 3x3 atrous (ASPP) branches"),
    "model.head.aspp_rates": Field(None, "ints", nullable=True,
                                   help="DeepLabv3 atrous rates; null: 6/12/18 at output stride 16, "
                                        "12/24/36 at 8, 3/6/9 at 32"),
    "model.head.channels": Field(256, "int", help="DeepLabv3: channels of each branch and the projection"),
    # data
    "data.format": Field("folder", "str", DATA_FORMATS),
    "data.root": Field("data", "path", help="dataset root directory"),
    "data.train_split": Field("train", "str"),
    "data.val_split": Field("val", "str"),
    "data.synthetic": Field(None, "str", SYNTHETIC, nullable=True,
                            help="generate this synthetic dataset into data.root on first use"),
    "data.shapes.num_train": Field(2000, "int"),
    "data.shapes.num_val": Field(500, "int"),
    "data.shapes.image_size": Field(96, "int"),
    "data.shapes.seed": Field(0, "int"),
    "data.shapes.texture_contrast": Field(None, "float", nullable=True,
                                          help="background texture contrast; null: the generator's"),
    "data.shapes.min_size_frac": Field(None, "float", nullable=True,
                                       help="detection: smallest object / short side; null: 0.08"),
    "data.coco.images": Field("{split}", "str", help="image folder under data.root"),
    "data.coco.annotations": Field("annotations/instances_{split}.json", "str"),
    "data.voc.images": Field("JPEGImages", "str", help="segmentation, voc: image folder under data.root"),
    "data.voc.masks": Field("SegmentationClass", "str", help="segmentation, voc: palette PNG label maps"),
    "data.voc.list": Field("ImageSets/Segmentation/{split}.txt", "str",
                           help="segmentation, voc: the split's image ids, one a line"),
    "data.folder.images": Field("{split}/images", "str",
                                help="segmentation, folder: image folder under data.root"),
    "data.folder.masks": Field("{split}/masks", "str",
                               help="segmentation, folder: PNG label maps named as their images"),
    "data.classes_file": Field("classes.txt", "str", nullable=True,
                               help="segmentation: class names one a line, background first, under "
                                    "data.root; voc without the file: the 21 VOC classes"),
    "data.decode": Field("graph", "str", DECODE_MODES,
                         help="image files: 'graph' decodes in TensorFlow ops after a one-time, "
                              "cached check against Pillow; 'python' decodes each with Pillow"),
    "data.skip_invalid": Field(False, "bool",
                               help="skip (and count) bad annotations and missing images"),
    "data.tfds.name": Field(None, "str", nullable=True, help="TFDS dataset name, e.g. imagenet2012"),
    "data.tfds.data_dir": Field(None, "path", nullable=True, help="where the TFDS data is prepared"),
    "data.tfds.image_key": Field("image", "str"),
    "data.tfds.label_key": Field("label", "str"),
    "data.augment.random_resized_crop": Field(True, "bool"),
    "data.augment.crop_scale": Field([0.08, 1.0], "floats", help="area fraction range of the crop"),
    "data.augment.crop_ratio": Field([0.75, 1.3333], "floats", help="aspect ratio range"),
    "data.augment.flip": Field(True, "bool", help="random horizontal flip"),
    "data.augment.scale_range": Field([0.5, 2.0], "floats",
                                      help="segmentation: random scale range before the crop"),
    "data.augment.ssd_crop": Field(True, "bool", help="detection: SSD random crop"),
    "data.augment.photometric": Field(True, "bool", help="detection: colour distortion"),
    "data.augment.zoom_out": Field(False, "bool", help="detection: zoom out (SSD expand)"),
    "data.augment.zoom_out_max": Field(2.0, "float"),
    "data.eval_crop": Field(0.875, "float", help="central crop fraction at evaluation"),
    "data.shuffle_buffer": Field(2048, "int"),
    # train
    "train.epochs": Field(10, "int"),
    "train.freeze_backbone_epochs": Field(0, "int",
                                          help="train the head alone (backbone frozen, its "
                                               "BatchNorm in inference mode) for the first N "
                                               "epochs, then everything (mobilevision.freeze)"),
    "train.batch_size": Field(32, "int"),
    "train.steps_per_epoch": Field(None, "int", nullable=True, help="default: one pass over train"),
    "train.optimizer.name": Field("rmsprop", "str", OPTIMIZERS),
    "train.optimizer.learning_rate": Field(0.045, "float"),
    "train.optimizer.momentum": Field(0.9, "float"),
    "train.optimizer.rho": Field(0.9, "float", help="RMSProp decay"),
    "train.optimizer.epsilon": Field(0.002, "float"),
    "train.optimizer.clipnorm": Field(None, "float", nullable=True),
    "train.lr_schedule.name": Field("exponential", "str", LR_SCHEDULES),
    "train.lr_schedule.decay_rate": Field(0.98, "float", help="exponential: factor per decay_epochs"),
    "train.lr_schedule.decay_epochs": Field(1.0, "float"),
    "train.lr_schedule.warmup_epochs": Field(0.0, "float"),
    "train.weight_decay": Field(4e-5, "float", help="L2 on conv and dense kernels (TF-slim scale)"),
    "train.label_smoothing": Field(0.1, "float"),
    "train.class_weights": Field(None, "floats", nullable=True,
                                 help="segmentation: loss weight per class (model.num_classes numbers)"),
    "train.precision": Field("float32", "str", PRECISIONS),
    "train.eval_every": Field(1, "int", help="validate every N epochs"),
    "train.verbose": Field("auto", "str", ("auto", "0", "1", "2")),
    # distribution (tf.distribute; train.batch_size is the global batch, split across replicas)
    "distribute.strategy": Field("default", "str", ("default", "mirrored", "multi_worker", "tpu"),
                                 help="default: one device; mirrored: the GPUs (or CPUs) of this "
                                      "machine; multi_worker: the cluster in TF_CONFIG; tpu"),
    "distribute.devices": Field(None, "strs", nullable=True,
                                help="mirrored: devices to use, e.g. [/gpu:0, /gpu:1]; null: every "
                                     "GPU, else every CPU device"),
    "distribute.cpu_devices": Field(0, "int",
                                    help="split the host CPU into this many logical devices (0: "
                                         "leave it whole); to try mirrored without GPUs"),
    "distribute.communication": Field("auto", "str", ("auto", "ring", "nccl"),
                                      help="multi_worker: collective implementation"),
    "distribute.tpu": Field("", "str", help="tpu: TPU name or grpc:// address; '' finds the local one"),
    "distribute.sync_batchnorm": Field(True, "bool",
                                       help="BatchNorm statistics over the global batch when there "
                                            "are several replicas (results do not depend on the "
                                            "replica count)"),
    # evaluation
    "eval.scales": Field([1.0], "floats",
                         help="segmentation: test scales; the paper's MF: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]"),
    "eval.flip": Field(False, "bool", help="segmentation: also average left-right flipped inputs"),
}


def defaults() -> dict:
    """The default config as a nested dict."""
    tree: dict = {}
    for key, field in SCHEMA.items():
        _set(tree, key, copy.deepcopy(field.default))
    return tree


class Config(dict):
    """A nested dict whose sections also read as attributes (`cfg.train.epochs`)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def get_path(self, dotted: str):
        node = self
        for part in dotted.split("."):
            node = node[part]
        return node

    def to_dict(self) -> dict:
        return _plain(self)


def _wrap(tree) -> Any:
    if isinstance(tree, dict):
        return Config({k: _wrap(v) for k, v in tree.items()})
    return tree


def _plain(tree) -> Any:
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_plain(v) for v in tree]
    return tree


def _set(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}. A dict value under a key that the schema knows as a leaf
    is kept whole so its type error names that key."""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in SCHEMA:
            if not value:
                flat[dotted] = value
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _suggest(key: str) -> str:
    keys = list(SCHEMA)
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:
        # Same last component in another section ("epochs" -> "train.epochs").
        last = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == last][:1]
    if not close:
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], keys, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _unknown(key: str, value, where: str) -> str:
    """The message for a key that is not in SCHEMA: a section given a value (`train: 5`, or
    `train:` with nothing under it), else an unknown key with the closest valid one."""
    inside = [k for k in SCHEMA if k.startswith(key + ".")]
    if inside:
        shown = ", ".join(inside[:3]) + (", ..." if len(inside) > 3 else "")
        got = "nothing" if value is None else repr(value)
        return (f"{where}: key '{key}' is a section; expected a mapping of its keys ({shown}), "
                f"got {got}")
    return f"{where}: unknown key '{key}'{_suggest(key)}"


def _check_type(key: str, value, where: str):
    """Return `value` converted to the field's type, or raise ConfigError."""
    field = SCHEMA[key]

    def bad(expected):
        return ConfigError(f"{where}: key '{key}' expects {expected}, got {value!r}")

    if value is None:
        if field.nullable:
            return None
        raise bad(f"a {field.kind} (it may not be null)")
    kind = field.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif kind == "float":
        if isinstance(value, str):
            # YAML 1.1 reads 4e-5 (no dot) as a string; accept what Python reads as a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif kind in ("str", "path", "file", "weights", "backbone_weights"):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and kind == "str":
            value = str(value)
        if not isinstance(value, str):
            raise bad("a string")
    elif kind == "size":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
            raise bad("[height, width], two positive integers")
    elif kind == "floats":
        if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise bad("a list of numbers")
        value = [float(v) for v in value]
    elif kind == "ints":
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad("a list of integers")
    elif kind == "strs":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
    else:  # pragma: no cover - a schema mistake
        raise AssertionError(f"unknown field kind {kind}")
    if field.choices is not None and value not in field.choices:
        choices = ", ".join(repr(c) for c in field.choices)
        raise ConfigError(f"{where}: key '{key}' must be one of {choices}, got {value!r}")
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one, so a
    second `train:` section would silently drop every key of the first)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # the base class reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    """The top-level mapping of a YAML config file; ConfigError naming the file (and the line,
    where there is one) when it cannot be read, is not UTF-8, is not valid YAML, repeats a key,
    is empty or is not a mapping."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save "
                          f"the config as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        if "\t" in text and ("tab" in str(e).lower() or "'\\t'" in str(e)):
            problem += " (YAML does not allow tabs for indentation; use spaces)"
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
    if data is None:
        # Most likely a file emptied by mistake; training the defaults (ImageNet from `data/`)
        # instead would be a surprise. The bundled configs show what goes in.
        raise ConfigError(f"{path}: config file is empty (or only comments); expected a mapping "
                          f"of keys such as 'task: classification'")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def bundled_config_dirs() -> list[Path]:
    """Where `--config NAME.yaml` looks after the path itself: the repository's configs/ (an
    editable install or a checkout) and the configs installed under sys.prefix."""
    import sys

    here = Path(__file__).resolve().parent
    return [here.parent / "configs", Path(sys.prefix) / "share" / "mobilevision" / "configs"]


def find_config(name_or_path: str | os.PathLike) -> Path:
    """A path that exists wins; else a file of that name in the bundled configs."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config '{name_or_path}' is a directory; expected a YAML file")
    for folder in bundled_config_dirs():
        candidate = folder / path.name
        if candidate.is_file():
            return candidate
    available = sorted({p.name for d in bundled_config_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    close = difflib.get_close_matches(path.name, available, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"config '{name_or_path}' not found as a path nor among the bundled configs "
        f"({', '.join(available) or 'none'}){hint}"
    )


def parse_override(text: str):
    """'train.epochs=5' -> ('train.epochs', 5). The value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(name_or_path=None, overrides: Sequence[str] = (), *, check_files: bool = True,
                values: dict | None = None, where: str | None = None) -> Config:
    """Build the config: defaults, then the YAML file (if any), then `key=value` overrides.

    values: a nested dict read in place of a YAML file (an exported file's resolved config),
      `where` naming it in errors.
    Returns a `Config` with two extra keys: `name` (the run name) and `_source` (the YAML path).
    Raises ConfigError for unknown keys, wrong types, and missing files for file-valued keys.
    """
    tree = defaults()
    source = None
    overridden = {}  # key -> the override that set it, which cross-field errors name
    if name_or_path is not None:
        source = find_config(name_or_path)
        values, where = _read_yaml(source), str(source)
    if values is not None:
        for key, value in _flatten({k: v for k, v in values.items()
                                    if not k.startswith("_")}).items():
            if key not in SCHEMA:
                raise ConfigError(_unknown(key, value, where))
            _set(tree, key, _check_type(key, value, where))
    for text in overrides:
        key, value = parse_override(text)
        where = overridden[key] = f"override '{text}'"
        if key not in SCHEMA:
            raise ConfigError(_unknown(key, value, where))
        _set(tree, key, _check_type(key, value, where))
    if tree.get("name") is None:
        tree["name"] = source.stem if source is not None else "default"
    cfg = _wrap(tree)
    _validate(cfg, source or where, check_files, overridden)
    cfg["_source"] = str(source) if source is not None else where
    return cfg


def _validate(cfg: Config, source, check_files: bool, overridden=None) -> None:
    """Cross-field checks and file existence."""
    where = str(source) if source is not None else "config"
    if check_files:
        for key, field in SCHEMA.items():
            if field.kind == "file":
                value = cfg.get_path(key)
                if value is not None and not Path(value).is_file():
                    raise ConfigError(f"{where}: key '{key}' names '{value}', which is not a file")
    h, w = cfg.model.input_size
    if h % 32 or w % 32:
        raise ConfigError(
            f"{where}: key 'model.input_size' must be multiples of 32 (the backbone's total stride), "
            f"got [{h}, {w}]"
        )
    if cfg.model.num_classes < 1:
        raise ConfigError(f"{where}: key 'model.num_classes' must be at least 1")
    if cfg.train.batch_size < 1 or cfg.train.epochs < 0:
        raise ConfigError(f"{where}: 'train.batch_size' must be >= 1 and 'train.epochs' >= 0")
    readable = {"classification": ("folder", "tfds"), "detection": ("coco", "tfds"),
                "segmentation": ("voc", "coco", "folder")}
    if cfg.data.format not in readable[cfg.task]:
        raise ConfigError(f"{where}: task '{cfg.task}' does not read data.format "
                          f"'{cfg.data.format}'; it reads {' or '.join(readable[cfg.task])}")
    _validate_features(cfg, (overridden or {}).get("model.head.features", where))
    _validate_transfer(cfg, where, check_files, overridden or {})
    if cfg.task == "segmentation":
        _validate_segmentation(cfg, where)
    if cfg.data.format == "tfds" and not cfg.data.tfds.name:
        raise ConfigError(f"{where}: data.format is 'tfds' but key 'data.tfds.name' is not set")


def _validate_features(cfg: Config, where: str) -> None:
    """The backbone exists and the head's taps are layers it has, in an order the head can use;
    `model.head.features` null becomes the backbone's default taps for the task."""
    from mobilevision.backbones import BACKBONES

    b = cfg.model.backbone
    if b.name not in BACKBONES:
        names = ", ".join(repr(n) for n in BACKBONES)
        raise ConfigError(f"{where}: key 'model.backbone.name' must be one of {names}, got "
                          f"{b.name!r}")
    backbone = BACKBONES[b.name]
    specs = backbone.feature_specs(b.alpha, b.output_stride)
    taps = cfg.model.head.features
    if taps is None:
        cfg.model.head["features"] = taps = list(backbone.head_taps[cfg.task])
    key = "model.head.features"
    for tap in taps:
        if tap not in specs:
            close = difflib.get_close_matches(tap, list(specs), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"{where}: key '{key}' names '{tap}', which backbone {b.name} does "
                              f"not have; {hint}its taps are {', '.join(specs)}")
    if not taps:
        raise ConfigError(f"{where}: key '{key}' needs at least one backbone tap")
    if cfg.task != "detection" and len(taps) != 1:
        raise ConfigError(f"{where}: key '{key}' names {len(taps)} taps, but the {cfg.task} head "
                          f"reads one feature map, got {taps}")
    strides = [specs[t][1] for t in taps]
    if len(set(taps)) != len(taps) or strides != sorted(strides):
        shown = ", ".join(f"{t} (stride {s})" for t, s in zip(taps, strides))
        raise ConfigError(f"{where}: key '{key}' must list distinct taps finest first (strides "
                          f"not decreasing), got {shown}")


def _validate_transfer(cfg: Config, where: str, check_files: bool, overridden: dict) -> None:
    """The weights to start from and the freezing schedule.

    `model.backbone.weights`: 'imagenet' where Keras publishes weights for the backbone and
    width (nothing is downloaded here), else an existing file. `model.weights`: a file, or a run
    folder, replaced by its best, else last checkpoint so the saved config names the file used.
    `train.freeze_backbone_epochs`: >= 0, and only for a backbone that is trainable at all."""
    from mobilevision.backbones.imagenet import imagenet_file
    from mobilevision.backbones.weights import IMAGENET, RUN_CHECKPOINTS, resolve_model_weights

    b = cfg.model.backbone
    key = "model.backbone.weights"
    at = overridden.get(key, where)
    if b.weights == IMAGENET:
        try:
            imagenet_file(b.name, b.alpha, cfg.model.input_size)
        except ValueError as e:
            raise ConfigError(f"{at}: key '{key}' is 'imagenet', but {e}; set "
                              f"model.backbone.alpha to one of those or name a weights file"
                              ) from None
    elif b.weights is not None and check_files and not Path(b.weights).is_file():
        close = difflib.get_close_matches(b.weights.lower(), [IMAGENET], n=1, cutoff=0.6)
        hint = f"; did you mean '{IMAGENET}'?" if close else ""
        raise ConfigError(f"{at}: key '{key}' names '{b.weights}', which is not a file; expected "
                          f"'{IMAGENET}' or a weights file{hint}")
    key = "model.weights"
    at = overridden.get(key, where)
    if cfg.model.weights is not None and check_files:
        value = cfg.model.weights
        try:
            cfg.model["weights"] = resolve_model_weights(value)
        except FileNotFoundError:
            if Path(value).is_dir():
                raise ConfigError(f"{at}: key '{key}' names the folder '{value}', which holds no "
                                  f"checkpoint; expected a weights file or a run folder holding "
                                  f"{' or '.join(RUN_CHECKPOINTS)}") from None
            hint = ("; ImageNet weights are the backbone's: did you mean "
                    "'model.backbone.weights'?" if value.lower() == IMAGENET else "")
            raise ConfigError(f"{at}: key '{key}' names '{value}', which is not a file; "
                              f"expected a weights file or a run folder{hint}") from None
    key = "train.freeze_backbone_epochs"
    at = overridden.get(key, where)
    if cfg.train.freeze_backbone_epochs < 0:
        raise ConfigError(f"{at}: key '{key}' must be >= 0, got {cfg.train.freeze_backbone_epochs}")
    if cfg.train.freeze_backbone_epochs and not b.trainable:
        raise ConfigError(f"{at}: key '{key}' unfreezes the backbone after "
                          f"{cfg.train.freeze_backbone_epochs} epoch(s), but "
                          f"model.backbone.trainable is false (frozen throughout); set one of them")


def _validate_segmentation(cfg: Config, where: str) -> None:
    weights = cfg.train.class_weights
    if weights is not None and (len(weights) != cfg.model.num_classes or min(weights) < 0):
        raise ConfigError(f"{where}: key 'train.class_weights' needs model.num_classes "
                          f"({cfg.model.num_classes}) non-negative numbers, got {weights}")
    if not cfg.eval.scales or min(cfg.eval.scales) <= 0:
        raise ConfigError(f"{where}: key 'eval.scales' needs at least one positive scale, "
                          f"got {cfg.eval.scales}")
    lo, hi = (cfg.data.augment.scale_range + [0, 0])[:2]
    if len(cfg.data.augment.scale_range) != 2 or not 0 < lo <= hi:
        raise ConfigError(f"{where}: key 'data.augment.scale_range' expects [min, max] with "
                          f"0 < min <= max, got {cfg.data.augment.scale_range}")
    rates = cfg.model.head.aspp_rates
    if rates is not None and (not rates or min(rates) < 1):
        raise ConfigError(f"{where}: key 'model.head.aspp_rates' expects positive integers, "
                          f"got {rates}")
    if cfg.model.head.aspp and rates is None:
        from mobilevision.backbones import BACKBONES
        from mobilevision.heads.deeplabv3 import DEFAULT_RATES

        b = cfg.model.backbone
        tap, = cfg.model.head.features
        stride = BACKBONES[b.name].feature_specs(b.alpha, b.output_stride)[tap][1]
        if stride not in DEFAULT_RATES:
            raise ConfigError(f"{where}: the DeepLabv3 head reads '{tap}' at stride {stride}, which "
                              f"has no default ASPP rates (strides {sorted(DEFAULT_RATES)} do); "
                              f"set key 'model.head.aspp_rates' or model.head.aspp=false")
    if not 2 <= cfg.model.num_classes <= 255:
        raise ConfigError(f"{where}: key 'model.num_classes' counts the background and must be "
                          f"2..255 for segmentation (label maps are 8-bit, 255 = ignore), got "
                          f"{cfg.model.num_classes}")


def _versions() -> str:
    """The versions a run's numbers depend on, e.g. 'python 3.11.9, tensorflow 2.21.0, ...'."""
    import platform
    from importlib import metadata

    found = [f"python {platform.python_version()}"]
    for package in ("tensorflow", "keras", "numpy"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically, with the package version in a header, so
    `--config path` repeats the run exactly."""
    from mobilevision.utils import atomic_write_text

    data = {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}
    header = (f"# resolved by mobilevision {__version__} from {cfg.get('_source')}\n"
              f"# with {_versions()}\n")
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False))
