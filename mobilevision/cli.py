"""The `mobilevision` command: train, evaluate, predict, export, profile.

Every command takes `--config NAME.yaml` (a path, else a bundled config) and trailing
`key=value` overrides, e.g. `mobilevision train --config shapes_classifier.yaml train.epochs=3`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobilevision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, help):
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--config", required=True, help="YAML file or bundled config name")
        c.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        return c

    c = command("train", "train a model; results go to runs/<config name>/")
    c.add_argument("--output", help="run directory (default runs/<config name>)")
    c.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    c.add_argument("--overwrite", action="store_true", help="start again in a folder that has a run")

    c = command("evaluate", "evaluate a checkpoint; writes eval.json and prints the metrics")
    c.add_argument("--weights", help="weights file (default: the run's best checkpoint)")
    c.add_argument("--model", help="evaluate an exported file instead (.tflite, .onnx or a "
                                   "SavedModel folder); results go to <file>.eval.json beside "
                                   "it (or in --output)")
    c.add_argument("--threads", type=int, help="with --model: runtime threads (default: all)")
    c.add_argument("--split", help="dataset split (default data.val_split)")
    c.add_argument("--output", help="run directory (default runs/<config name>)")

    c = command("predict", "run on an image or a folder; writes annotated images and JSON")
    c.add_argument("--input", required=True, help="an image file or a folder of images")
    c.add_argument("--weights", help="weights file (default: the run's best checkpoint)")
    c.add_argument("--model", help="run an exported file instead (.tflite, .onnx or a SavedModel "
                                   "folder); class names from the labels.txt beside it")
    c.add_argument("--output", help="output folder (default runs/<config name>/predictions)")
    c.add_argument("--score-threshold", type=float, metavar="S",
                   help="detection: draw the boxes scoring at least S (default "
                        "model.head.draw_threshold); predictions.json keeps every detection")

    from mobilevision.export.formats import FORMATS

    c = command("export", "write the model for apps and servers: " + ", ".join(FORMATS))
    c.add_argument("--weights", help="weights file (default: the run's best checkpoint)")
    c.add_argument("--format", required=True, metavar="F[,F...]",
                   help=f"one or more of {', '.join(FORMATS)} (comma-separated), or all")
    c.add_argument("--output", help="output folder (default runs/<config name>/export)")
    c.add_argument("--calibration-images", type=int, metavar="N",
                   help="tflite_int8: calibrate on the first N train images (default 200)")
    c.add_argument("--input-type", choices=("uint8", "float32"),
                   help="tflite_int8: the input tensor's type (default uint8)")
    c.add_argument("--opset", type=int, help="onnx: the ONNX opset (default: the exporter's)")
    c.add_argument("--nms", choices=("regular", "fast"),
                   help="detection TFLite: per-class NMS as in evaluation (regular, default) or "
                        "the post-process op's faster class-agnostic one")

    c = command("profile", "parameters, multiply-adds, peak activation memory, feature taps")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--layers", action="store_true", help="also print a row per layer")
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "model", None) and getattr(args, "weights", None):
        parser.error("--weights and --model exclude each other: an exported file holds its weights")
    from mobilevision.backbones.weights import WeightsFileError, WeightsMismatchError
    from mobilevision.config import ConfigError
    from mobilevision.data.decode import ImageDecodeError
    from mobilevision.data.image_folder import DatasetError
    from mobilevision.export.formats import ExportError
    from mobilevision.tasks.trainer import TrainingError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DatasetError, TrainingError, WeightsMismatchError, WeightsFileError,
            ImageDecodeError, ExportError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume training with --resume", file=sys.stderr)
        return 130


def _train(args) -> int:
    from mobilevision.config import load_config
    from mobilevision.tasks.trainer import dumps_metrics, run_dir_for, train

    cfg = load_config(args.config, args.overrides)
    results = train(cfg, output=args.output, resume=args.resume, overwrite=args.overwrite,
                    overrides=args.overrides)
    if "worker" in results:  # a multi-worker run's other workers write nothing
        print(f"worker {results['worker']} finished; the chief writes the run folder")
        return 0
    run = run_dir_for(cfg, args.output)
    print(f"\nrun folder: {run}\n  checkpoints: {run / 'checkpoints'}\n  metrics: "
          f"{run / 'metrics.csv'}\n  data report: {run / 'data.json'}\n  pictures: "
          f"{run / 'plots'} (curves.png, samples.png, ...)\n  results: {run / 'eval.json'}")
    print(dumps_metrics(results))
    return 0


def _evaluate(args) -> int:
    from mobilevision.config import load_config
    from mobilevision.tasks.trainer import dumps_metrics, evaluate_run, run_dir_for

    cfg = load_config(args.config, args.overrides)
    if args.model:
        return _evaluate_exported(cfg, args)
    run = run_dir_for(cfg, args.output)
    _check_weights(cfg, run, args.weights)
    results = evaluate_run(cfg, run, weights=args.weights, split=args.split)
    print(dumps_metrics(results))
    return 0


def _evaluate_exported(cfg, args) -> int:
    """Evaluate an exported file with the task's own metrics; write <file>.eval.json."""
    from mobilevision.data.skips import SKIPPED
    from mobilevision.export.runtime import load_exported
    from mobilevision.report import per_class_table
    from mobilevision.tasks import get_task
    from mobilevision.tasks.trainer import dumps_metrics, report_skips
    from mobilevision.utils import atomic_write_json

    task = get_task(cfg)
    task.prepare_data()
    model = load_exported(args.model, task, num_threads=args.threads)
    split = args.split or cfg.data.val_split
    results = task.evaluate(model, split)
    results["model"] = str(args.model)
    results["skipped_files"] = SKIPPED.items()
    report_skips()
    # Beside the file, or in --output under the file's name: never over a run's own eval.json.
    name = Path(str(args.model).rstrip("/")).name + ".eval.json"
    out = Path(args.output) / name if args.output else Path(args.model).parent / name
    atomic_write_json(out, results)
    print(f"wrote {out}", file=sys.stderr)
    table = per_class_table(results)
    if table:
        print(table)
    print(dumps_metrics(results))
    return 0


def _export(args) -> int:
    from mobilevision.config import load_config
    from mobilevision.export import export_model, parse_formats
    from mobilevision.tasks import get_task
    from mobilevision.tasks.trainer import load_run_weights, run_dir_for

    cfg = load_config(args.config, args.overrides)
    formats = parse_formats(args.format)
    run = run_dir_for(cfg)
    _check_weights(cfg, run, args.weights)
    task = get_task(cfg)
    model = task.build_model()
    weights = load_run_weights(model, run, args.weights)
    out = Path(args.output or run / "export")
    print(f"exporting {cfg.name} ({weights or cfg.model.weights}) to {out}")
    export_model(task, model, formats, out, calibration_images=args.calibration_images,
                 input_type=args.input_type, opset=args.opset, nms=args.nms,
                 labels=_run_labels(run, cfg.model.num_classes))
    print(f"labels: {out / 'labels.txt'}")
    return 0


def _run_labels(run, num_classes: int):
    """The class names a training run saved (run/labels.txt), or None when there are none."""
    path = run / "labels.txt"
    if not path.exists():
        return None
    names = [n for n in path.read_text(encoding="utf-8").split("\n") if n]
    if len(names) != num_classes:
        from mobilevision.config import ConfigError

        raise ConfigError(f"{path}: {len(names)} class names, but model.num_classes is "
                          f"{num_classes}")
    return names


def _check_weights(cfg, run, weights) -> None:
    """Before anything is built: --weights, when given, must exist; else there must be the run's
    best or last checkpoint, or model.weights (which build_model loads), since untrained weights
    help no one. The weights are then loaded by `load_run_weights`."""
    from mobilevision.tasks.trainer import find_checkpoint

    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file")
    if weights is None and not cfg.model.weights and find_checkpoint(run) is None:
        raise FileNotFoundError(f"no checkpoint in {run / 'checkpoints'}: train first, or pass "
                                f"--weights FILE or model.weights=FILE")


def _predict(args) -> int:
    from mobilevision.config import ConfigError, load_config
    from mobilevision.data.decode import is_image_file
    from mobilevision.tasks import get_task
    from mobilevision.tasks.trainer import load_run_weights, run_dir_for
    from mobilevision.utils import atomic_write_json

    overrides = list(args.overrides)
    if args.score_threshold is not None:
        if not 0.0 <= args.score_threshold <= 1.0:
            raise ConfigError(f"--score-threshold {args.score_threshold}: expected a score "
                              f"between 0 and 1")
        overrides.append(f"model.head.draw_threshold={args.score_threshold}")
    cfg = load_config(args.config, overrides)
    if args.score_threshold is not None and cfg.task != "detection":
        raise ConfigError(f"--score-threshold applies to detection; {args.config} is a "
                          f"{cfg.task} config")
    run = run_dir_for(cfg)
    src = Path(args.input)
    if src.is_dir():
        paths = sorted(str(p) for p in src.rglob("*") if p.is_file() and is_image_file(p.name))
        if not paths:
            raise FileNotFoundError(f"--input {src}: folder has no images (.jpg, .jpeg, .png, .bmp)")
    elif src.is_file():
        paths = [str(src)]
    else:
        raise FileNotFoundError(f"--input {src}: no such file or folder")
    task = get_task(cfg)
    if args.model:
        from mobilevision.export.runtime import load_exported

        model = load_exported(args.model, task)
        names = _run_labels(Path(args.model).parent, cfg.model.num_classes)
    else:
        _check_weights(cfg, run, args.weights)
        model = task.build_model()
        load_run_weights(model, run, args.weights)
        names = None
    names = names or _run_labels(run, cfg.model.num_classes)
    out = Path(args.output or run / "predictions")
    results = task.predict(model, paths, out, class_names=names)
    atomic_write_json(out / "predictions.json", results)
    print(f"wrote {len(results)} annotated image(s) and {out / 'predictions.json'}")
    return 0


def _profile(args) -> int:
    from mobilevision.config import load_config
    from mobilevision.profile import format_profile, profile_model
    from mobilevision.tasks import get_task

    # Weights do not change the figures: profile without needing the files.
    cfg = load_config(args.config, list(args.overrides) + ["model.weights=null",
                                                           "model.backbone.weights=null"])
    task = get_task(cfg)
    prof = profile_model(task.build_model())
    from mobilevision.backbones import BACKBONES

    b = cfg.model.backbone
    backbone = BACKBONES[b.name]
    specs = backbone.feature_specs(b.alpha, b.output_stride)
    h, w = cfg.model.input_size
    prof["features"] = {name: {"shape": [h // specs[name][1], w // specs[name][1], specs[name][0]],
                               "stride": specs[name][1]}
                        for name in dict.fromkeys([*backbone.taps, *cfg.model.head.features])}
    # The maps the head reads (and, for the detector, every map it predicts on, with anchors).
    prof["feature_maps"] = maps = task.feature_maps()
    if any("anchors" in m for m in maps):
        prof["anchors"] = sum(m["anchors"] for m in maps)
    prof["config"] = cfg.get("_source")
    if args.json:
        print(json.dumps({k: v for k, v in prof.items() if k != "layers"}))
    else:
        print(format_profile(prof, layers=args.layers))
        print("feature taps (name: H x W x C, stride):")
        for name, f in prof["features"].items():
            s = f["shape"]
            print(f"  {name:24s} {s[0]:4d} x {s[1]:4d} x {s[2]:5d}   stride {f['stride']}")
        detector = "anchors" in prof
        print("maps the head " + ("predicts on (name: H x W, stride, anchors per cell, anchors):"
                                  if detector else "reads (name: H x W x C, stride):"))
        for m in maps:
            size = f"{m['size'][0]:4d} x {m['size'][1]:4d}"
            if detector:
                print(f"  {m['name']:24s} {size}   stride {m['stride']:g}   "
                      f"{m['anchors_per_location']} x {m['size'][0] * m['size'][1]} = {m['anchors']}")
            else:
                print(f"  {m['name']:24s} {size} x {m['channels']:5d}   stride {m['stride']}")
        if detector:
            print(f"  anchors in all: {prof['anchors']}")
    return 0


COMMANDS = {"train": _train, "evaluate": _evaluate, "predict": _predict, "export": _export,
            "profile": _profile}


if __name__ == "__main__":
    sys.exit(main())
