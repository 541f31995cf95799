"""The `mobilevision` command: train, evaluate, predict, export, profile.

Every command takes `--config NAME.yaml` (a path, else a bundled config) and trailing
`key=value` overrides, e.g. `mobilevision train --config shapes_classifier.yaml train.epochs=3`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobilevision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, help):
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--config", help="YAML file or bundled config name (required, except with "
                                        "--model: an exported file brings its own)")
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
                                   "folder); it holds its task, class names and config")
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
    c.add_argument("--web-runtime", metavar="DIR",
                   help="web: an installed @mediapipe/tasks-vision to copy into the page "
                        "(default: ./node_modules, else the page loads it from its CDN)")
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
    if args.config is None and not getattr(args, "model", None):
        parser.error("--config is required (with --model an exported file brings its own)")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; resume training with --resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a user's mistake is one line; anything else raises
        if not isinstance(e, _user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def _user_errors() -> tuple:
    """The exceptions that report a user's mistake (a config key, a file, the data), from the
    modules this process has imported: a command that never imported TensorFlow need not import
    it to print its error."""
    found = [FileNotFoundError]
    for module, names in (("mobilevision.config", ("ConfigError",)),
                          ("mobilevision.data.image_folder", ("DatasetError",)),
                          ("mobilevision.data.decode", ("ImageDecodeError",)),
                          ("mobilevision.export.formats", ("ExportError",)),
                          ("mobilevision.runs", ("TrainingError",)),
                          ("mobilevision.backbones.weights", ("WeightsMismatchError",
                                                              "WeightsFileError"))):
        if module in sys.modules:
            found += [getattr(sys.modules[module], name) for name in names]
    return tuple(found)


def _train(args) -> int:
    from mobilevision.api import train
    from mobilevision.runs import dumps_metrics
    from mobilevision.tasks import trainer

    # The wait to the first step counts from the process's start, for this command only: a
    # `train()` called later in the same process (a notebook, a test) counts from its call.
    trainer.STARTED_BY_COMMAND = True
    try:
        run = train(args.config, *args.overrides, output=args.output, resume=args.resume,
                    overwrite=args.overwrite)
    finally:
        trainer.STARTED_BY_COMMAND = False
    if run.folder is None:  # a multi-worker run's other workers write nothing
        print(f"worker {run.metrics['worker']} finished; the chief writes the run folder")
        return 0
    folder = run.folder
    print(f"\nrun folder: {folder}\n  checkpoints: {folder / 'checkpoints'}\n  metrics: "
          f"{folder / 'metrics.csv'}\n  data report: {folder / 'data.json'}\n  pictures: "
          f"{folder / 'plots'} (curves.png, samples.png, ...)\n  results: {folder / 'eval.json'}")
    print(dumps_metrics(run.metrics))
    return 0


def _keras_model(args, check=None):
    """The Keras model a command names: --weights, else the run's best (else last) checkpoint,
    else model.weights; -> (Model, the run folder). check(task) runs on the config's task
    before anything is built."""
    from mobilevision.api import load_keras
    from mobilevision.config import load_config
    from mobilevision.runs import run_dir_for

    cfg = load_config(args.config, args.overrides)
    if check is not None:
        check(cfg.task)
    run = run_dir_for(cfg, getattr(args, "output", None) if args.command == "evaluate" else None)
    return load_keras(cfg, run, args.weights), run


def _evaluate(args) -> int:
    from mobilevision.runs import dumps_metrics

    if args.model:
        return _evaluate_exported(args)
    model, run = _keras_model(args)
    results = model.evaluate(args.split, output=run)
    print(dumps_metrics(results))
    return 0


def _evaluate_exported(args) -> int:
    """Evaluate an exported file with the task's own metrics; write <file>.eval.json."""
    from mobilevision.api import load
    from mobilevision.report import per_class_table
    from mobilevision.runs import dumps_metrics
    from mobilevision.utils import atomic_write_json

    model = load(args.model, config=args.config, overrides=args.overrides, threads=args.threads)
    results = model.evaluate(args.split)
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
    from mobilevision.export import parse_formats

    formats = parse_formats(args.format)
    model, run = _keras_model(args)
    out = Path(args.output or run / "export")
    print(f"exporting {model.config.name} ({model.path}) to {out}")
    model.export(formats, out, calibration_images=args.calibration_images,
                 input_type=args.input_type, opset=args.opset, nms=args.nms,
                 web_runtime=args.web_runtime)
    print(f"labels: {out / 'labels.txt'}")
    return 0


def _predict(args) -> int:
    from mobilevision.config import ConfigError
    from mobilevision.utils import atomic_write_json

    settings = {}
    if args.score_threshold is not None:
        if not 0.0 <= args.score_threshold <= 1.0:
            raise ConfigError(f"--score-threshold {args.score_threshold}: expected a score "
                              f"between 0 and 1")
        settings["draw_threshold"] = args.score_threshold
    src = Path(args.input)
    if not src.exists():
        raise FileNotFoundError(f"--input {src}: no such file or folder")

    def check(task):
        if args.score_threshold is not None and task != "detection":
            raise ConfigError(f"--score-threshold applies to detection; "
                              f"{args.config or args.model} is a {task} model")

    if args.model:
        from mobilevision.api import load

        model = load(args.model, config=args.config, overrides=args.overrides)
        check(model.task)
        run = Path(args.model).parent
    else:
        model, run = _keras_model(args, check)
    try:
        results = model.predict(str(src), on_error="keep", **settings)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--input {e}") from None
    results = results if isinstance(results, list) else [results]
    out = Path(args.output or run / "predictions")
    out.mkdir(parents=True, exist_ok=True)
    for result in results:
        if hasattr(result, "save"):
            result.save(out)
    atomic_write_json(out / "predictions.json", [r.to_json() for r in results])
    print(f"wrote {len(results)} annotated image(s) and {out / 'predictions.json'}")
    return 0


def _profile(args) -> int:
    from mobilevision.config import load_config
    from mobilevision.profile import format_profile, profile_model
    from mobilevision.tasks import build_model
    from mobilevision.tasks.base import head_taps

    # Weights do not change the figures: profile without needing the files.
    cfg = load_config(args.config, list(args.overrides) + ["model.weights=null",
                                                           "model.backbone.weights=null"])
    model = build_model(cfg)
    prof = profile_model(model)
    from mobilevision.backbones import BACKBONES

    b = cfg.model.backbone
    backbone = BACKBONES[b.name]
    specs = backbone.feature_specs(b.alpha, b.output_stride)
    h, w = cfg.model.input_size
    prof["features"] = {name: {"shape": [h // specs[name][1], w // specs[name][1], specs[name][0]],
                               "stride": specs[name][1]}
                        for name in dict.fromkeys([*backbone.taps, *cfg.model.head.features])}
    # The maps the head reads (and, for the detector, every map it predicts on, with anchors).
    if cfg.task == "detection":
        from mobilevision.tasks.detection import feature_maps

        maps = feature_maps(cfg, model)
    else:
        maps = [{"name": name, "size": [h // stride, w // stride], "channels": channels,
                 "stride": stride} for name, channels, stride in head_taps(cfg)]
    prof["feature_maps"] = maps
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
