"""`Model`: a model of one task in one runtime (a Keras model, or a .tflite, .onnx or SavedModel
file), with the surface every runtime shares: `predict` (typed results), `evaluate` (the task's
metrics, through `predict`), `export`. `mobilevision.load` makes one; training evaluates through
one (`tasks.trainer`).

Running a file imports neither TensorFlow nor Keras: this module imports them only where a
Keras model or a dataset is involved.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from mobilevision.config import ConfigError
from mobilevision.inference import PREDICT, settings_from_config

KERAS_BATCH = 16  # images per Keras predict call (the exported runners take what they can)


class Model:
    """A model of one task in one runtime, with the surface every runtime shares.

    task: "classification", "detection" or "segmentation". names: class names by index.
    input_size: (H, W). config: the resolved config (a Keras model's, or the one export wrote
    into the file). runtime: "keras", "tflite", "onnx" or "saved_model". keras_model: the Keras
    model (None for a file). path: the file, run folder or weights it came from.
    """

    def __init__(self, run, *, task, names, input_size, config=None, runtime="keras",
                 keras_model=None, path=None, run_folder=None):
        self._run = run
        self.task, self.names, self.input_size = task, list(names), tuple(input_size)
        self.config, self.runtime, self.keras_model = config, runtime, keras_model
        self.path, self.run_folder = path, run_folder
        self._sized = {}
        self._one_scale_noted = False

    @classmethod
    def from_keras(cls, model, cfg, *, names=None, run=None, weights=None) -> "Model":
        """Wrap a Keras model of `cfg` (one that owns its decoder, `tasks.build_model`).
        names: class names (default: the run's labels.txt, else the dataset's)."""
        names = names or _class_names(cfg, run)
        return cls(_KerasRunner(model), task=cfg.task, names=names,
                   input_size=tuple(model.input_shape[1:3]), config=cfg, keras_model=model,
                   path=weights, run_folder=run)

    def __repr__(self) -> str:
        return (f"mobilevision.Model({self.task}, {self.runtime}, input {self.input_size}, "
                f"{len(self.names)} classes, from {self.path})")

    # Predict ---------------------------------------------------------------------------------
    def predict(self, source, *, batch_size: int | None = None, on_error: str = "raise",
                **settings):
        """Run on images; -> one result (`mobilevision.results`) per image.

        source: an image file, an (h, w, 3) uint8 RGB array, a folder (its images, recursively,
          sorted) or a list of files and arrays. A file or an array gives one result; a folder or
          a list gives a list.
        on_error: "raise" (default) stops at a file that cannot be read; "keep" puts an
          `UnreadableImage` (file, reason) in its place.
        settings: override what the config implies: detection `draw_threshold`, classification
          `crop`, segmentation `scales` and `flip` (other scales need the Keras model).
        """
        from mobilevision.results import UnreadableImage

        if on_error not in ("raise", "keep"):
            raise ValueError(f"on_error must be 'raise' or 'keep', got {on_error!r}")
        items, single = _inputs(source)
        settings = self._settings(settings)
        batch_size = batch_size or KERAS_BATCH
        out, pending = [None] * len(items), []

        def flush():
            images = [image for _, image, _ in pending]
            files = [file for _, _, file in pending]
            for (i, _, _), result in zip(pending, self._predict(images, files, settings)):
                out[i] = result
            pending.clear()

        for i, item in enumerate(items):
            try:
                image, file = _image(item)
            except Exception as e:  # noqa: BLE001 - re-raised unless kept
                from mobilevision.data.decode import ImageDecodeError

                if on_error == "raise" or not isinstance(e, ImageDecodeError):
                    raise
                out[i] = UnreadableImage(str(item), e.reason)
                continue
            pending.append((i, image, file))
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
        return out[0] if single else out

    def _predict(self, images, files, settings):
        common = {"input_size": self.input_size, "names": self.names}
        if self.task == "segmentation":
            return PREDICT[self.task](self._run_at, images, files, **common, **settings)
        return PREDICT[self.task](self._run, images, files, **common, **settings)

    def segmentation_options(self, scales=None, flip=None) -> dict:
        """The scales and flip segmentation runs with: the config's unless given."""
        given = {k: v for k, v in (("scales", scales), ("flip", flip)) if v is not None}
        settings = self._settings(given)
        return {"scales": settings.get("scales", (1.0,)), "flip": settings.get("flip", False)}

    def _settings(self, given: dict) -> dict:
        """What predict runs with: the config's settings (`settings_from_config`), then `given`.
        A file has one input size: where its config asks for other segmentation scales too (the
        shapes demo evaluates at 1.0 and 1.5), it runs at scale 1.0 with the config's flip and
        says so once on stderr; other scales given in the call are an error (`_run_at`)."""
        settings = settings_from_config(self.task, self.config)
        scales = tuple(settings.get("scales", (1.0,)))
        if self.keras_model is None and "scales" not in given and scales != (1.0,):
            if not self._one_scale_noted:
                self._one_scale_noted = True
                print(f"note: an exported model has one input size, {self.input_size}: scale "
                      f"1.0 only, not the config's eval.scales {list(scales)} (those need the "
                      f"Keras model: the run folder or its weights)", file=sys.stderr)
            settings["scales"] = (1.0,)
        return {**settings, **given}

    def _run_at(self, size):
        """The model at input `size` (segmentation's other scales): a Keras model built at that
        size holding the same weights (cached; the weights are copied at each predict call, as
        they may have changed since); a file has one size."""
        size = tuple(size)
        if size == self.input_size:
            return self._run
        if self.keras_model is None:
            raise ConfigError(f"a scale other than 1.0 asked for (input {list(size)}), but an "
                              f"exported model has one input size, {self.input_size}: use "
                              f"eval.scales=[1.0] (and the same for the Keras model, to compare)")
        from mobilevision.tasks import TASKS

        net = self._sized.get(size)
        if net is None:
            cfg = _without_weights(self.config)
            net = self._sized[size] = TASKS[self.task].build(cfg, size)
        net.set_weights(self.keras_model.get_weights())
        return _KerasRunner(net)

    # Evaluate --------------------------------------------------------------------------------
    def evaluate(self, split: str | None = None, *, output=None, **options) -> dict:
        """The task's metrics on a split of the config's dataset (default data.val_split):
        COCO AP (detection), mIoU (segmentation), top-1/top-5 (classification); a Keras model
        and every exported file are scored by the same code, through `predict`.

        output: a folder to write eval.json, the task's files (detections_<split>.json) and the
        pictures into (plots/, another split's in plots/<split>/; also to TensorBoard).
        options: the task's (segmentation: scales, flip). Returns what eval.json holds."""
        metrics, _ = self.evaluate_with_pictures(split, output=output, **options)
        return metrics

    def evaluate_with_pictures(self, split=None, *, output=None, pictures=None, step=0,
                               **options):
        """`evaluate`, returning (metrics, evaluation); with `output` (pictures default True)
        also the pictures. Used by training, which writes them at its own epoch `step`."""
        from mobilevision.data.skips import SKIPPED, report_skips
        from mobilevision.report import per_class_table
        from mobilevision.tasks import TASKS

        cfg = self._data_config()
        source = self.source()
        split = split or cfg.data.val_split
        task = TASKS[self.task]
        evaluation = task.evaluate(self, source, split, **options)
        metrics = evaluation.metrics
        metrics["weights" if self.runtime == "keras" else "model"] = str(self.path)
        metrics["skipped_files"] = SKIPPED.items()
        report_skips()
        if output is not None:
            from mobilevision import plots
            from mobilevision.utils import atomic_write_json

            output = Path(output)
            for name, data in evaluation.files.items():
                atomic_write_json(output / name, data)
            atomic_write_json(output / "eval.json", metrics)
            if pictures is None or pictures:
                val = split == cfg.data.val_split
                plots.write_task_pictures(task.pictures(self, source, split, evaluation),
                                          output / "plots" if val else output / "plots" / split,
                                          logdir=output / "logs" / ("validation" if val else split),
                                          step=step)
        table = per_class_table(metrics)
        if table and output is not None:
            print(table)
        return metrics, evaluation

    def source(self):
        """The data source of the config (`data.sources`), its dataset generated first when
        the config asks for the synthetic `shapes` (cached)."""
        if getattr(self, "_source", None) is None:
            from mobilevision.data.sources import source_for

            from mobilevision.data.shapes import prepare_data

            cfg = self._data_config()
            prepare_data(cfg)
            self._source = source_for(cfg)
        return self._source

    def _data_config(self):
        if self.config is None:
            raise ConfigError(f"{self.path}: holds no config to find the data in; pass one: "
                              f"mobilevision.load(path, config=...)")
        if not hasattr(self.config, "data"):  # an exported file's own config: check it now
            from mobilevision.config import load_config

            self.config = load_config(values=self.config, where=str(self.path))
        return self.config

    # Export ----------------------------------------------------------------------------------
    def export(self, formats, output=None, *, calibration_images: int | None = None,
               input_type: str | None = None, opset: int | None = None, nms: str | None = None,
               web_runtime=None, log=print) -> dict:
        """Write the model in each of `formats` (names of `export.formats.FORMATS`, a list or
        "tflite,onnx", or "all") into `output` (default: the run folder's export/, else
        runs/<config name>/export), with labels.txt. int8 calibrates on the first
        `calibration_images` (default 200) readable images of the train split, prepared as
        `predict` prepares them. "web" writes output/web/, a page that runs the float32 and
        int8 TFLite files (written too) in a browser, with a few validation images as samples;
        web_runtime: an installed @mediapipe/tasks-vision to copy into it (docs/web.md).
        Returns {format: path}."""
        from mobilevision.export import export_model, parse_formats
        from mobilevision.export.formats import ExportError

        if self.keras_model is None:
            raise ExportError(f"{self.path} is an exported {self.runtime} file; export from the "
                              f"Keras model (a run folder or weights file)")
        if isinstance(formats, str):
            formats = parse_formats(formats)
        else:
            formats = parse_formats(",".join(formats))
        cfg = self.config
        if output is None:
            from mobilevision.runs import run_dir_for

            output = Path(self.run_folder or run_dir_for(cfg)) / "export"
        records = export_model(
            self.keras_model, formats, output, name=cfg.name, task=self.task, labels=self.names,
            config={k: v for k, v in cfg.to_dict().items() if not k.startswith("_")},
            calibration=self._calibration, calibration_images=calibration_images,
            input_type=input_type, opset=opset, nms=nms, web_runtime=web_runtime,
            samples=self._web_samples() if "web" in formats else (),
            settings=settings_from_config(self.task, cfg), log=log)
        return {r["format"]: Path(r["path"]) for r in records}

    def _web_samples(self, count: int = 4) -> list:
        """Files of the validation split's fixed sample for the web page (readable ones, at
        most `count`); none when the dataset is not here (a run exported elsewhere)."""
        from mobilevision.data.decode import ImageDecodeError, read_image
        from mobilevision.data.image_folder import DatasetError
        from mobilevision.plots import sample_indices

        try:
            source, split = self.source(), self.config.data.val_split
            paths = [source.path(split, i) for i in sample_indices(source.size(split))]
        except (DatasetError, FileNotFoundError, OSError, ValueError) as e:
            print(f"web page: no sample images (the validation split: {e})", file=sys.stderr)
            return []
        found = []
        for path in paths:
            try:
                read_image(path)
            except ImageDecodeError:
                continue
            found.append(path)
        return found[:count]

    def _calibration(self, count: int) -> np.ndarray:
        """The first `count` readable images of the train split, prepared as `predict` prepares
        them at the model's input size: (count, H, W, 3) float32 0..255."""
        from mobilevision.export.formats import ExportError
        from mobilevision.inference import PREPARE
        from mobilevision.tasks.base import readable_batches

        split = self.config.data.train_split
        settings = settings_from_config(self.task, self.config)
        images = []
        for batch in readable_batches(self.source(), split, 32):
            images += [PREPARE[self.task](image, self.input_size, **settings)
                       for _, image, _ in batch]
            if len(images) >= count:
                break
        if not images:
            raise ExportError(f"calibration: no readable image in split {split!r}")
        return np.stack(images[:count])


class _KerasRunner:
    """A Keras model that owns its decoder: batch -> decoded outputs as numpy."""

    def __init__(self, model):
        self.model = model

    def __call__(self, images) -> dict:
        out = self.model.predict_on_batch(np.asarray(images, np.float32))
        return {k: np.asarray(v) for k, v in out.items()}


def _without_weights(cfg):
    import copy

    cfg = copy.deepcopy(cfg)
    cfg["model"]["weights"] = None  # the caller copies all weights over
    cfg["model"]["backbone"]["weights"] = None
    return cfg


def _class_names(cfg, run) -> list[str]:
    """The run's labels.txt, else the dataset's class names, else class_0 ... (with a warning:
    predictions then carry no names)."""
    if run is not None and (Path(run) / "labels.txt").is_file():
        from mobilevision.runs import read_labels

        return read_labels(Path(run) / "labels.txt", cfg.model.num_classes)
    from mobilevision.data.image_folder import DatasetError
    from mobilevision.data.sources import source_for

    try:
        return source_for(cfg).class_names
    except (DatasetError, FileNotFoundError, OSError) as e:
        print(f"warning: no class names (no labels.txt beside the weights, and the dataset: "
              f"{e}); naming them class_0 ...", file=sys.stderr)
        return [f"class_{i}" for i in range(cfg.model.num_classes)]


def _inputs(source):
    """-> (items, single): the images `predict` was given, as a list of paths and arrays, and
    whether one result (not a list) answers."""
    from mobilevision.data.decode import is_image_file

    if isinstance(source, np.ndarray):
        return [source], True
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            paths = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_file(p.name)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not paths:
                raise FileNotFoundError(f"{path}: folder has no images (.jpg, .jpeg, .png, .bmp)")
            return paths, False
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        return [str(path)], True
    if isinstance(source, (list, tuple)):
        return list(source), False
    raise TypeError(f"predict takes an image file, an (h, w, 3) uint8 array, a folder or a list "
                    f"of them, got {type(source).__name__}")


def _image(item):
    """-> (image (h, w, 3) uint8 RGB, file or None)."""
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[-1] != 3 or item.dtype != np.uint8:
            raise ValueError(f"an image array must be (h, w, 3) uint8 RGB, got {item.shape} "
                             f"{item.dtype}")
        return item, None
    from mobilevision.data.decode import read_image

    return read_image(item), str(item)  # a missing file is an ImageDecodeError naming it
