"""Weight files into a model: the run's own checkpoints with Keras' own loader, foreign files by
layer name.

- `load_checkpoint(model, path)`: a file `save_weights` wrote for a model built from the same
  config (a run's `checkpoints/{last,best}.weights.h5`), read by Keras' own `load_weights`.
- `load_weights_by_name(model, path)`: a foreign file, layer by layer name, nested models
  included: legacy HDF5 as `keras.applications` distributes it (`mobilenet_v2_weights_tf_dim_
  ordering_tf_kernels_1.0_224.h5`, `..._no_top.h5`, or a full-model `.h5`), another model's
  Keras 3 `.weights.h5` or `.keras` archive.
- `load_model_weights(model, path)` (`model.weights=FILE`, `--weights FILE`): the first for a
  Keras 3 file of a structurally identical model; else by layer name, every layer whose shape
  fits, the rest started fresh (fine-tuning on other classes, or from another task's model).
- `imagenet.load_backbone_weights(model, weights, ...)` (`model.backbone.weights`): `imagenet`
  (keras.applications' file) or a file, by layer name; it lives beside the download it needs.
- `resolve_model_weights(path)`: a weights file, or a run folder's best, else last checkpoint.

The loaders but `load_checkpoint` return a `LoadReport`: per layer, loaded or started fresh and
why; `summary()` is one line, `describe()` the console listing, `to_json()` a run folder's
`weights.json`.

A Keras 3 file (`keras.src.saving.saving_lib`) holds each layer at a save path made of the
snake-cased class name and a counter that restarts in every container (`layers/conv2d_1`; a nested
model is `layers/functional/layers/...`), its variables under `<path>/vars/0, 1, ...`, the
optimizer under `optimizer/`. Recent Keras versions record the layer name as the attribute `name`
of each `vars` group, and layers are matched by it. Older Keras 3 files have no names and are
matched by position: for each layer class, the k-th saved layer goes to the model's k-th layer of
that class, both sides ordered nested models first, then by the save counter. So a flat
`keras.applications` file fills a backbone nested in a classifier, which creates the same layer
classes in the same order; layers only one side has must come last (a truncated backbone), else
the shape check will usually catch the shift.

The by-name loader checks every matched layer's shapes and assigns nothing unless the whole
load succeeds, so a failed load leaves the model unchanged.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
import zipfile
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import h5py
import numpy as np

import keras

__all__ = [
    "LoadReport",
    "ShapeMismatch",
    "WeightsFileError",
    "WeightsMismatchError",
    "layer_names_with_weights",
    "load_checkpoint",
    "load_model_weights",
    "load_weights_by_name",
    "resolve_model_weights",
]

# How many layer names an error message lists before it says "... and N more".
_MAX_LISTED = 20

# Top-level groups of a Keras 3 weights file that hold no layer weights.
_NON_LAYER_ROOTS = {"optimizer", "compile_metrics", "metrics", "loss", "loss_tracker"}

# A run folder's checkpoints, best first (`BEST` and `LAST` of mobilevision.tasks.trainer; a test
# keeps the two in step).
RUN_CHECKPOINTS = ("checkpoints/best.weights.h5", "checkpoints/last.weights.h5")

# The value of `model.backbone.weights` that names keras.applications' published weights.
IMAGENET = "imagenet"


class WeightsFileError(ValueError):
    """The weights file is not a file this loader can read (not HDF5, unknown layout)."""


class WeightsMismatchError(ValueError):
    """The weights file does not fit the model. `.report` holds the by-name loader's
    `LoadReport` (None when Keras' own loader refused the file)."""

    def __init__(self, message: str, report: "LoadReport | None" = None):
        super().__init__(message)
        self.report = report


class ShapeMismatch(NamedTuple):
    """A layer present on both sides whose variables differ.

    `expected` (the model's) and `found` (the file's) are the shapes of the first variable that
    differs; when the two sides hold a different number of variables they are the tuples of all
    variable shapes instead.
    """

    name: str
    expected: tuple
    found: tuple


@dataclass
class LoadReport:
    """What `load_weights_by_name` did (or, on a `WeightsMismatchError`, found).

    loaded:     the model's layer names whose weights fit, in model order (assigned unless the
                load raised).
    missing:    the model's weighted layers with no counterpart in the file.
    unused:     the file's weighted layers that were not used (e.g. `predictions` when a file
                with the classifier top is loaded into a backbone); for a file that records no
                layer names these are save paths such as "layers/dense".
    mismatched: `ShapeMismatch(name, expected, found)` triples for matched layers whose
                variables differ in shape or count.
    matched_by: "name" or "position" (see the module docstring), or "save_path" when Keras' own
                loader read a checkpoint of the same model (`load_model_weights`).
    file_format: "legacy_h5", "weights_h5" or "keras_zip".
    model_layers: the model's weighted layer names, in model order.
    scopes:     layer name -> the nested model holding it (the backbone, e.g. "mobilenet_v2"),
                "" for the model's own layers (the head).
    source, sha256, note: where the file came from when the user did not name it (`imagenet`:
                its URL), its SHA-256, and anything the loader chose on the user's behalf.

    Where a loader starts layers fresh instead of failing (`load_model_weights`), `missing` and
    `mismatched` are the layers started fresh; `fresh` lists them in model order with the reason.
    """

    path: str
    file_format: str
    matched_by: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    mismatched: list[ShapeMismatch] = field(default_factory=list)
    model_layers: list[str] = field(default_factory=list)
    scopes: dict = field(default_factory=dict)
    source: str | None = None
    sha256: str | None = None
    note: str | None = None

    @property
    def fresh(self) -> list[tuple[str, str]]:
        """(layer, reason) for each layer not loaded, in model order; reason is "not in the file"
        or "shape <model's> in the model, <file's> in the file"."""
        why = {name: "not in the file" for name in self.missing}
        for m in self.mismatched:
            why[m.name] = f"shape {m.expected} in the model, {m.found} in the file"
        return [(name, why[name]) for name in self.model_layers if name in why]

    def _how(self) -> str:
        return {"save_path": "Keras' own loader, a checkpoint of this model",
                "name": "by layer name", "position": "by position"}.get(self.matched_by,
                                                                      self.matched_by)

    def summary(self) -> str:
        """One line: how many layers loaded, which started fresh, how many of the file's unused."""
        total = len(self.model_layers) or len(self.loaded) + len(self.fresh)
        line = (f"loaded {len(self.loaded)} of {total} weighted layers from {self.path} "
                f"({self._how()})")
        fresh = [name for name, _ in self.fresh]
        if fresh:
            shown = ", ".join(fresh[:8]) + (f", ... and {len(fresh) - 8} more"
                                            if len(fresh) > 8 else "")
            line += f"; {len(fresh)} started fresh: {shown}"
        if self.unused:
            line += f"; {len(self.unused)} of the file's layers unused"
        return line

    def describe(self, max_lines: int = 40) -> str:
        """The console listing: the summary, loaded layers counted per nested model (the backbone)
        and for the model's own layers, then each layer started fresh with its reason, then the
        file's unused layers. `to_json()` lists every layer."""
        lines = [self.summary()]
        if self.source:
            lines.append(f"  source: {self.source}" + (f" (sha256 {self.sha256})"
                                                        if self.sha256 else ""))
        if self.note:
            lines.append(f"  note: {self.note}")
        loaded = set(self.loaded)
        groups: dict[str, list[str]] = {}
        for name in self.model_layers or self.loaded:
            groups.setdefault(self.scopes.get(name, ""), []).append(name)
        for scope, names in groups.items():
            got = [n for n in names if n in loaded]
            # The model's own layers are the head beside a nested backbone; else the model is one.
            label = scope or ("head (the model's own layers)" if len(groups) > 1 else "the model")
            what = f"{len(got)} of {len(names)} layers"
            if 0 < len(got) <= 12 and len(got) < len(names):
                what += ": " + ", ".join(got)
            lines.append(f"  loaded  {label}: {what}")
        fresh = self.fresh
        width = max((len(n) for n, _ in fresh[:max_lines]), default=0)
        for name, reason in fresh[:max_lines]:
            lines.append(f"  fresh   {name:<{width}}  {reason}")
        if len(fresh) > max_lines:
            lines.append(f"  fresh   ... and {len(fresh) - max_lines} more")
        if self.unused:
            lines.append(f"  unused from the file: {_listing(self.unused)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Everything, per layer, as plain JSON types (for a run folder's `weights.json`)."""
        mismatched = {m.name: m for m in self.mismatched}
        missing, loaded = set(self.missing), set(self.loaded)
        layers = []
        for name in self.model_layers or self.loaded:
            entry = {"layer": name, "in": self.scopes.get(name, "")}
            if name in loaded:
                entry["status"] = "loaded"
            elif name in mismatched:
                m = mismatched[name]
                entry.update(status="fresh", reason="shape", model_shape=_plain_shape(m.expected),
                             file_shape=_plain_shape(m.found))
            elif name in missing:
                entry.update(status="fresh", reason="not in the file")
            layers.append(entry)
        return {"file": self.path, "source": self.source, "sha256": self.sha256,
                "format": self.file_format, "matched_by": self.matched_by, "note": self.note,
                "summary": self.summary(),
                "counts": {"layers": len(layers), "loaded": len(self.loaded),
                           "fresh": len(self.fresh), "unused": len(self.unused)},
                "layers": layers, "unused": list(self.unused)}

    def to_json(self) -> str:
        """`to_dict()` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _plain_shape(shape) -> list:
    # A ShapeMismatch holds one shape, or a tuple of shapes when the variable counts differ.
    return [_plain_shape(s) if isinstance(s, tuple) else int(s) for s in shape]


# --------------------------------------------------------------------------------------------
# The model's side


@dataclass
class _Unit:
    """One layer of the model that owns variables."""

    name: str
    variables: list
    key: str | None  # Keras 3 save path, e.g. "layers/functional/layers/conv2d_3"
    scope: str = ""  # the nested model holding the layer (the backbone), "" at the top level


def _own_variables(layer) -> list:
    # The order `Layer.save_own_variables` writes, which is also the legacy order
    # (trainable first) for every built-in layer.
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def _is_container(layer) -> bool:
    """Functional and Sequential models: their sublayers are saved under `<path>/layers/`."""
    return isinstance(layer, keras.Model) and layer._obj_type() in ("Functional", "Sequential")


def _snake(name: str) -> str:
    # Same as keras.src.utils.naming.to_snake_case.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _walk_units(model, prefix: str | None = "", scope: str = ""):
    """Yield the weighted layers of `model` in save order, recursing into nested models.

    `prefix` is the save path of `model` plus "/" ("" for the root); None where the save path
    cannot be derived (inside a composite layer), and then the units get no key. `scope` is the
    name of the outermost nested model the layers sit in ("" for the root's own layers).
    """
    counters: dict[str, int] = {}
    for layer in model.layers:
        base = _snake(layer.__class__.__name__)
        if base in counters:  # keras.src.saving.saving_lib._get_unique_name
            counters[base] += 1
            base = f"{base}_{counters[base]}"
        else:
            counters[base] = 0
        path = None if prefix is None else f"{prefix}layers/{base}"
        if _is_container(layer):
            yield from _walk_units(layer, None if path is None else path + "/",
                                   scope or layer.name)
        else:
            yield from _walk_layer(layer, path, scope)


def _walk_layer(layer, path: str | None, scope: str = ""):
    variables = _own_variables(layer)
    if variables:
        yield _Unit(layer.name, variables, path, scope)
    # Sublayers of a composite (non-model) layer are saved under attribute names, which this
    # loader does not reconstruct: they can be matched by name only.
    for sub in getattr(layer, "_layers", None) or []:
        if _is_container(sub):
            yield from _walk_units(sub, None, scope or sub.name)
        else:
            yield from _walk_layer(sub, None, scope)


def _model_units(model) -> list[_Unit]:
    units = _walk_units(model) if _is_container(model) else _walk_layer(model, None)
    # A layer reachable twice (shared) is loaded once.
    seen, out = set(), []
    for u in units:
        ident = tuple(id(v) for v in u.variables)
        if ident not in seen:
            seen.add(ident)
            out.append(u)
    return out


def layer_names_with_weights(model) -> list[str]:
    """Names of the layers of `model` that own variables, in save order, nested models flattened.

    These are the names `load_weights_by_name` reports as `loaded` / `missing`.
    """
    return [u.name for u in _model_units(model)]


# --------------------------------------------------------------------------------------------
# The file's side


@dataclass
class _Entry:
    """One weighted layer in the file: h5py datasets in variable order (read lazily)."""

    name: str | None  # layer name, when the file records it
    datasets: list
    key: str | None = None  # Keras 3 save path (without "/vars")

    @property
    def label(self) -> str:
        return self.name if self.name is not None else self.key

    @property
    def shapes(self) -> list[tuple]:
        return [tuple(d.shape) for d in self.datasets]


def _decode(x) -> str:
    return x.decode("utf8") if isinstance(x, bytes) else str(x)


def _h5_list_attr(group, name: str) -> list[str]:
    """A list-valued attribute, also when Keras split it into `name0`, `name1`, ... chunks."""
    if name in group.attrs:
        return [_decode(x) for x in np.atleast_1d(group.attrs[name])]
    out, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
        out.extend(_decode(x) for x in np.atleast_1d(group.attrs[f"{name}{chunk}"]))
        chunk += 1
    return out


def _legacy_entries(root) -> list[_Entry]:
    entries = []
    for layer_name in _h5_list_attr(root, "layer_names"):
        if layer_name not in root:
            continue
        group = root[layer_name]
        weight_names = _h5_list_attr(group, "weight_names")
        if not weight_names:
            continue
        # A plain layer's weights are "<layer>/kernel:0"; a nested model's group holds the
        # weights of all its layers, so split it on the layer part of each weight name.
        by_layer: dict[str, list] = {}
        for wn in weight_names:
            parts = wn.split("/")
            owner = parts[-2] if len(parts) >= 2 else layer_name
            by_layer.setdefault(owner, []).append(group[wn])
        if len(by_layer) == 1:
            entries.append(_Entry(layer_name, next(iter(by_layer.values()))))
        else:
            entries.extend(_Entry(owner, ds) for owner, ds in by_layer.items())
    return entries


def _var_index(key: str) -> int:
    return int(key) if key.isdigit() else 1 << 30


def _weights_h5_entries(f) -> list[_Entry]:
    entries = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Group) or name.rsplit("/", 1)[-1] != "vars":
            return
        datasets = [obj[k] for k in sorted(obj.keys(), key=_var_index)
                    if isinstance(obj[k], h5py.Dataset)]
        if not datasets:
            return
        key = name[: -len("vars")].rstrip("/")
        if key.split("/", 1)[0] in _NON_LAYER_ROOTS:
            return
        layer_name = obj.attrs.get("name")
        entries.append(_Entry(_decode(layer_name) if layer_name is not None else None,
                              datasets, key))

    f.visititems(visit)
    return entries


def _read_array(ds) -> np.ndarray:
    arr = np.asarray(ds[()])
    if ds.attrs.get("dtype") == "bfloat16":  # how Keras stores bfloat16 variables
        import ml_dtypes

        arr = arr.astype(ml_dtypes.bfloat16)
    return arr


def _open(path: str):
    """Return (h5py.File, file_format); the caller closes the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    if os.path.isdir(path):
        raise WeightsFileError(f"Weights path is a directory, not a weights file: {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if "model.weights.h5" not in names:
                raise WeightsFileError(
                    f"{path} is a zip archive without model.weights.h5 (a sharded or non-Keras "
                    f"archive?); it holds: {', '.join(names[:10])}"
                )
            data = zf.read("model.weights.h5")
        try:
            return h5py.File(io.BytesIO(data), "r"), "keras_zip"
        except OSError as e:
            raise WeightsFileError(f"{path}: model.weights.h5 is not valid HDF5: {e}") from e
    if not h5py.is_hdf5(path):
        raise WeightsFileError(
            f"{path} is not an HDF5 file (expected a Keras .h5 / .weights.h5 or a .keras archive)"
        )
    try:
        return h5py.File(path, "r"), None
    except OSError as e:
        raise WeightsFileError(f"{path} could not be opened as HDF5: {e}") from e


@contextmanager
def _file_entries(path: str):
    """Open `path`; yield (its weighted layers as `_Entry`s, file_format), closing it after."""
    f, file_format = _open(path)
    with f:
        legacy = next((g for g in (f, f.get("model_weights")) if isinstance(g, h5py.Group) and (
            "layer_names" in g.attrs or "layer_names0" in g.attrs)), None)
        if legacy is not None:
            yield _legacy_entries(legacy), "legacy_h5"
            return
        entries = _weights_h5_entries(f)
        if not entries and "vars" not in f and not any(
                isinstance(o, h5py.Group) and "vars" in o for o in f.values()):
            raise WeightsFileError(
                f"{path} is HDF5 but neither a legacy Keras weights file (no `layer_names` "
                f"attribute) nor a Keras 3 weights file (no `vars` groups)"
            )
        yield entries, file_format or "weights_h5"


# --------------------------------------------------------------------------------------------
# Matching by name or position


def _position_key(key: str):
    """(class, sort key) of a save path for matching by position.

    "layers/functional/layers/conv2d_3" -> ("conv2d", ((0, "functional", 0), (1, "", 3))).
    Nested containers sort before the layers beside them.
    """
    segs = key.split("/")
    order, cls, i = [], None, 0
    while i < len(segs):
        if segs[i] == "layers" and i + 1 < len(segs):
            m = re.fullmatch(r"(.*?)(?:_(\d+))?", segs[i + 1])
            base, idx = m.group(1), int(m.group(2) or 0)
            is_container = i + 2 < len(segs) and segs[i + 2] == "layers"
            order.append((0, base, idx) if is_container else (1, "", idx))
            cls = base
            i += 2
        else:  # attribute path of a composite layer
            order.append((2, segs[i], 0))
            cls = segs[i]
            i += 1
    return cls, tuple(order)


def _match_by_name(units, entries):
    pool = defaultdict(list)
    for e in entries:
        pool[e.name].append(e)
    pairs = []
    for u in units:
        if pool.get(u.name):
            pairs.append((u, pool[u.name].pop(0)))
    return pairs


def _match_by_position(units, entries):
    def grouped(items):
        groups = defaultdict(list)
        for it in items:
            if it.key is None:
                continue
            cls, order = _position_key(it.key)
            groups[cls].append((order, it))
        return {c: [it for _, it in sorted(g, key=lambda t: t[0])] for c, g in groups.items()}

    ours, theirs = grouped(units), grouped(entries)
    pairs = []
    for cls, us in ours.items():
        pairs.extend(zip(us, theirs.get(cls, [])))
    order = {id(u): i for i, u in enumerate(units)}
    return sorted(pairs, key=lambda p: order[id(p[0])])


def _first_mismatch(unit, entry):
    ours = [tuple(v.shape) for v in unit.variables]
    theirs = entry.shapes
    if len(ours) != len(theirs):
        return ShapeMismatch(unit.name, tuple(ours), tuple(theirs))
    for a, b in zip(ours, theirs):
        if a != b:
            return ShapeMismatch(unit.name, a, b)
    return None


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f", ... and {len(names) - _MAX_LISTED} more"
    return shown


# --------------------------------------------------------------------------------------------
# Public entry points


@contextmanager
def _planned(model, path: str):
    """Open `path` and match its weighted layers to `model`'s (by name, or by position for a file
    that records no names), checking shapes. Yields (report, pairs whose shapes fit) while the
    file is open: the pairs' datasets are read lazily."""
    with _file_entries(path) as (entries, file_format):
        units = _model_units(model)
        if file_format == "legacy_h5" or (entries and all(e.name is not None for e in entries)):
            matched_by, pairs = "name", _match_by_name(units, entries)
        else:
            matched_by, pairs = "position", _match_by_position(units, entries)
        good, mismatched = [], []
        for u, e in pairs:
            mm = _first_mismatch(u, e)
            if mm:
                mismatched.append(mm)
            else:
                good.append((u, e))
        matched_units = {id(u) for u, _ in pairs}
        matched_entries = {id(e) for _, e in pairs}
        report = LoadReport(
            path=path,
            file_format=file_format,
            matched_by=matched_by,
            loaded=[u.name for u, _ in good],
            missing=[u.name for u in units if id(u) not in matched_units],
            unused=[e.label for e in entries if id(e) not in matched_entries],
            mismatched=mismatched,
            model_layers=[u.name for u in units],
            scopes={u.name: u.scope for u in units},
        )
        yield report, good


def _problems(report: LoadReport, allow_unused: bool) -> list[str]:
    problems = []
    if report.missing:
        problems.append(f"{len(report.missing)} layer(s) of the model are not in the file: "
                        f"{_listing(report.missing)}")
    if report.mismatched:
        problems.append(f"{len(report.mismatched)} layer(s) have mismatched shapes: "
                        f"{_described(report.mismatched)}")
    if report.unused and not allow_unused:
        problems.append(f"{len(report.unused)} layer(s) of the file are not in the model: "
                        f"{_listing(report.unused)}")
    return problems


def _described(mismatched: list[ShapeMismatch]) -> str:
    return _listing([f"{m.name} (model {m.expected}, file {m.found})" for m in mismatched])


def _read_values(good) -> list:
    # Read everything before assigning anything, so a read error leaves the model unchanged.
    return [(v, _read_array(ds)) for u, e in good for v, ds in zip(u.variables, e.datasets)]


def _assign(values) -> None:
    for variable, value in values:
        try:
            value = value.astype(np.dtype(keras.backend.standardize_dtype(variable.dtype)),
                                 copy=False)
        except TypeError:  # a dtype numpy does not name (bfloat16): let the backend cast
            pass
        variable.assign(value)


def load_weights_by_name(model, path, *, allow_unused: bool = True) -> LoadReport:
    """Load the foreign weights file `path` into `model` by layer name (see module docstring).

    Args:
      model: a built Keras model (or layer); nested functional/Sequential models are descended.
      path: a legacy Keras `.h5`, a Keras 3 `.weights.h5`, or a `.keras` archive.
      allow_unused: when False, weighted layers of the file that the model lacks are an error
        (True: a file with the classifier top fills a backbone).

    Returns:
      A `LoadReport`.

    Raises:
      FileNotFoundError: `path` does not exist.
      WeightsFileError: `path` is not HDF5 / not a Keras archive / of an unknown layout.
      WeightsMismatchError: model layers missing from the file or with other shapes (or unused
        file layers, with `allow_unused=False`), listed by name. Nothing is assigned then.
    """
    path = os.fspath(path)
    with _planned(model, path) as (report, good):
        problems = _problems(report, allow_unused)
        if problems:
            raise WeightsMismatchError(
                f"Weights file {path} does not fit model '{model.name}' "
                f"(matched by {report.matched_by}): " + "; ".join(problems),
                report,
            )
        values = _read_values(good)
    _assign(values)
    return report


def load_checkpoint(model, path) -> None:
    """Load a checkpoint of `model`: a `.weights.h5` (or `.keras`) that `save_weights` wrote for a
    model built from the same config, e.g. a run's `checkpoints/best.weights.h5`.

    Keras' own `model.load_weights` reads it: every layer by its save path, and the optimizer
    state where `model` has a built optimizer (resuming a run); a model without one (evaluation,
    export) takes the weights only.

    Raises:
      FileNotFoundError: `path` does not exist.
      WeightsFileError: `path` is not a readable HDF5 file.
      WeightsMismatchError: one line naming `path`, when its layers do not fit `model` (a
        checkpoint of another config). The model may then be partly loaded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    optimizer = getattr(model, "optimizer", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except OSError as e:
            raise WeightsFileError(f"{path} could not be read as a Keras weights file: {e}"
                                   ) from None
        except ValueError as e:  # its warnings go with it: they only repeat what failed
            # Keras says which layer failed and why over several lines, then dumps the values.
            detail = " ".join(str(e).split("Target variable:")[0].split("List of objects")[0]
                              .split())
            raise WeightsMismatchError(
                f"Checkpoint {path} does not fit model '{model.name}' (a checkpoint of another "
                f"config?): {detail[:400]}") from None
    for w in caught:
        # An optimizer never built has no state to restore, which Keras warns about: not news.
        if optimizer is None or optimizer.built or "optimizer" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _fits_exactly(model, path: str) -> bool:
    """True when `path` is a Keras 3 file holding what `model.save_weights` writes: the same
    weighted layers at the same save paths, with the same shapes."""
    if not path.endswith((".weights.h5", ".keras")):
        return False
    ours = {u.key: [tuple(v.shape) for v in u.variables] for u in _model_units(model)}
    if None in ours:  # a composite layer: save paths not derived here
        return False
    with _file_entries(path) as (entries, file_format):
        return file_format != "legacy_h5" and ours == {e.key: e.shapes for e in entries}


def resolve_model_weights(path) -> str:
    """The weights file that `path` names: the file itself, or for a run folder its best, else
    last checkpoint (`RUN_CHECKPOINTS`).

    Raises:
      FileNotFoundError: neither a file nor a folder holding one of those checkpoints; the
        message names `path` and what was expected.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        for rel in RUN_CHECKPOINTS:
            candidate = os.path.join(path, rel)
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(f"{path} is a folder without a checkpoint (expected a run folder "
                                f"holding {' or '.join(RUN_CHECKPOINTS)})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    return path


def load_model_weights(model, path) -> LoadReport:
    """Load `path` into the whole of `model` (`model.weights`, `--weights`), starting fresh the
    layers it cannot fill: fine-tuning on other classes, or from another task's model.

    Args:
      model: the task model (built, uncompiled or compiled).
      path: a weights file (`.weights.h5`, `.keras`, legacy `.h5`) or a run folder (its best,
        else last checkpoint, `resolve_model_weights`).

    A Keras 3 file of a structurally identical model (a checkpoint of this config, from any run)
    loads exactly, with Keras' own loader (`load_checkpoint`). Any other file loads by layer
    name: each layer of the model whose variables have the same shapes in the file is loaded;
    one the file lacks, or holds with other shapes (a class predictor for another class count,
    another task's head), keeps its fresh initial weights. The file's other layers are unused.

    The backbone must be the file's backbone: layers inside a nested model (the backbone) may be
    absent from the file (a segmenter's backbone stops before `Conv_1`) but not of another shape
    (another width); in a model without nested models every layer counts as backbone.

    Returns:
      A `LoadReport`: `loaded`, `fresh` (layer, reason) and `unused`; `summary()` for the log,
      `describe()` for the console, `to_json()` for the run folder's `weights.json`.

    Raises:
      FileNotFoundError: `path` is neither a file nor a run folder with a checkpoint.
      WeightsFileError: not a readable weights file.
      WeightsMismatchError: the file fits nothing (no layer of the same name and shape: another
        backbone), holds another backbone (backbone layers of other shapes), or records no
        layer names (an older Keras 3 file) and does not fit completely by position. Nothing is
        assigned then.
    """
    path = resolve_model_weights(path)
    if _fits_exactly(model, path):
        load_checkpoint(model, path)
        units = _model_units(model)
        return LoadReport(path=path, file_format="keras_zip" if path.endswith(".keras")
                          else "weights_h5", matched_by="save_path",
                          loaded=[u.name for u in units], model_layers=[u.name for u in units],
                          scopes={u.name: u.scope for u in units})
    with _planned(model, path) as (report, good):
        if report.matched_by == "position":
            # Matching by position is only sound between models that create the same layers
            # in the same order; between two heads it would pair unrelated layers.
            problems = _problems(report, allow_unused=False)
            if problems:
                raise WeightsMismatchError(
                    f"Weights file {path} records no layer names (an older Keras 3 file), so "
                    f"its layers can only be matched by position, which needs the same model: "
                    + "; ".join(problems), report)
        if not good:
            in_file = report.unused + [m.name for m in report.mismatched]
            raise WeightsMismatchError(
                f"Weights file {path} does not fit model '{model.name}': it fits nothing, none "
                f"of the model's {len(report.model_layers)} weighted layers is in the file with "
                f"the same name and shapes (a file of another backbone?); the file holds "
                f"{_listing(in_file) or 'no weighted layers'}", report)
        nested = any(report.scopes.values())
        clash = [m for m in report.mismatched if report.scopes.get(m.name) or not nested]
        if clash:
            raise WeightsMismatchError(
                f"Weights file {path} does not fit model '{model.name}': its backbone is another "
                f"(another width?), {len(clash)} backbone layer(s) have mismatched shapes: "
                f"{_described(clash)}; only the head's layers may differ", report)
        values = _read_values(good)
    _assign(values)
    return report
