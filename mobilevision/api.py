"""The Python API: train, load, predict, evaluate and export in a few lines.

    import mobilevision as mv

    run = mv.train("shapes_ssdlite.yaml", "train.epochs=3", output="runs/demo")
    model = mv.load("runs/demo")           # a run folder (its best checkpoint), a weights file
                                           # with its config, or an exported .tflite / .onnx /
                                           # SavedModel folder
    result = model.predict("img.jpg")      # a path, an (h, w, 3) uint8 RGB array; a list or a
                                           # folder gives a list
    result.boxes, result.scores, result.classes, result.names
    metrics = model.evaluate()             # what eval.json holds (split= another split)
    files = model.export(["tflite", "tflite_int8"])      # {format: path}
    mv.load(files["tflite"]).predict("img.jpg")          # the same result type

The commands (`scripts/*.py`, `mobilevision ...`) parse their arguments and call these.
Loading and running a .tflite or .onnx file imports neither TensorFlow nor Keras: this module
imports them only where a Keras model or a dataset is involved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mobilevision.config import ConfigError
from mobilevision.model import Model


@dataclass
class Run:
    """A finished training run: its folder, best checkpoint, resolved config and the metrics of
    that checkpoint on the validation split (eval.json)."""

    folder: Path
    weights: Path | None
    config: dict = field(repr=False)
    metrics: dict = field(repr=False)

    def load(self) -> "Model":
        """The trained model, as `mobilevision.load(run.folder)`."""
        return load(self.folder)


def train(config, *overrides: str, output=None, resume: bool = False,
          overwrite: bool = False) -> Run:
    """Train a config end to end, as `scripts/train.py --config CONFIG [key=value ...]` does.

    config: a YAML path or a bundled config's name. overrides: "key=value" strings.
    output: the run folder (default runs/<config name>). resume: continue the run in `output`
    from its last checkpoint. overwrite: start again in a folder that holds a run.
    Returns the Run (on a multi-worker cluster's other workers: folder None, metrics
    {"worker", "weights_sha1"})."""
    from mobilevision.config import load_config
    from mobilevision.runs import find_checkpoint, run_dir_for
    from mobilevision.tasks.trainer import train as run_training

    cfg = load_config(config, list(overrides))
    metrics = run_training(cfg, output=output, resume=resume, overwrite=overwrite,
                           overrides=list(overrides))
    if "worker" in metrics:
        return Run(None, None, cfg, metrics)
    folder = run_dir_for(cfg, output)
    return Run(folder, find_checkpoint(folder), cfg, metrics)


def load(path=None, *, config=None, overrides=(), threads: int | None = None) -> "Model":
    """A model to predict, evaluate and export with.

    path:
      - a run folder (holding config.yaml): its best checkpoint, else its last;
      - a weights file (.weights.h5, .h5, .keras) with `config`, or inside a run folder's
        checkpoints/ (whose config.yaml is used);
      - an exported .tflite or .onnx file or SavedModel folder: runs in LiteRT, ONNX Runtime or
        TensorFlow, with the task, labels, input size and config export wrote into it;
      - a YAML config (or None with `config`): the run folder of that config
        (`runs/<name>`, or its `output`), else its `model.weights`.
    config, overrides: the config (path or bundled name) and "key=value" overrides; for an
      exported file they replace or amend its own config (the data to evaluate on, say), and
      must describe the same task and input size.
    threads: an exported file's runtime threads (default: the runtime's choice).
    """
    from mobilevision.export.runtime import exported_kind

    overrides = list(overrides)
    if path is not None and not Path(path).exists() and Path(path).suffix not in (".yaml", ".yml"):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path is not None and exported_kind(path):
        return _load_exported(path, config, overrides, threads)
    if path is not None and str(path).endswith((".yaml", ".yml")):
        path, config = None, path
    from mobilevision.config import load_config

    if path is not None and Path(path).is_dir():
        if not (Path(path) / "config.yaml").is_file():
            raise FileNotFoundError(f"{path}: not a run folder (no config.yaml) nor a SavedModel "
                                    f"(no saved_model.pb)")
        cfg = load_config(config or Path(path) / "config.yaml", overrides)
        return load_keras(cfg, Path(path), None)
    if path is not None:  # a weights file
        run = _run_of_weights(path)
        if config is None and run is None:
            raise ConfigError(f"{path}: a weights file needs its config: "
                              f"mobilevision.load(path, config=...) or --config")
        cfg = load_config(config or run / "config.yaml", overrides)
        return load_keras(cfg, run, Path(path))
    if config is None:
        raise ConfigError("load() needs a path or a config")
    from mobilevision.runs import run_dir_for

    cfg = load_config(config, overrides)
    return load_keras(cfg, run_dir_for(cfg), None)


def _run_of_weights(path) -> Path | None:
    """The run folder a checkpoint sits in (run/checkpoints/x.weights.h5), or None."""
    parent = Path(path).resolve().parent
    if parent.name == "checkpoints" and (parent.parent / "config.yaml").is_file():
        return parent.parent
    return None


def load_keras(cfg, run=None, weights=None) -> "Model":
    """The Keras model of a resolved config (`load_config`) with `weights` (a file, loaded as
    model.weights loads), else the best (else last) checkpoint of the run folder `run`, else
    `model.weights`; an untrained model is refused (it would help no one)."""
    from mobilevision.runs import find_checkpoint
    from mobilevision.tasks import build_model
    from mobilevision.tasks.trainer import set_precision

    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file")
    found = weights or (find_checkpoint(run) if run is not None else None)
    if found is None and not cfg.model.weights:
        raise FileNotFoundError(f"no checkpoint in {Path(run or 'runs') / 'checkpoints'}: train "
                                f"first, or pass --weights FILE or model.weights=FILE")
    set_precision(cfg)
    model = build_model(cfg)
    if found is not None:
        from mobilevision.backbones.weights import load_checkpoint, load_model_weights

        (load_model_weights if weights is not None else load_checkpoint)(model, found)
    return Model.from_keras(model, cfg, run=run, weights=found or Path(cfg.model.weights))


def _load_exported(path, config, overrides, threads) -> "Model":
    from mobilevision.export.runtime import open_exported

    runner, info = open_exported(path, threads)
    cfg = info.get("config")
    if config is not None or overrides:
        from mobilevision.config import load_config

        given = load_config(config, overrides) if config is not None else load_config(
            values=cfg or {}, overrides=overrides, where=f"{path} ({runner.__class__.__name__})")
        _check_fits(path, info, given)
        cfg = given
    return Model(runner, task=info["task"], names=list(info["labels"]),
                 input_size=tuple(info["input_size"]), config=cfg, path=Path(path),
                 runtime=_RUNTIMES[type(runner).__name__])


_RUNTIMES = {"TFLiteRunner": "tflite", "OnnxRunner": "onnx", "SavedModelRunner": "saved_model"}


def _check_fits(path, info, cfg) -> None:
    """An exported file evaluated with a config must be of its task and input size."""
    from mobilevision.export.formats import ExportError

    if info["task"] != cfg.task:
        raise ExportError(f"--model {path}: a {info['task']} model, but {cfg.get('_source')} is "
                          f"a {cfg.task} config: was it exported for another task?")
    if tuple(info["input_size"]) != tuple(cfg.model.input_size):
        raise ExportError(f"--model {path}: input is {tuple(info['input_size'])} but the "
                          f"config's model.input_size is {tuple(cfg.model.input_size)}: evaluate "
                          f"with the config it was exported from")
