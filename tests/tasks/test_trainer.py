"""The trainer: run directory contents, atomic checkpoints, resume after SIGKILL, NaN stop, and
the evaluate / predict commands on a trained run."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

import mobilevision as mv
from mobilevision.cli import main
from mobilevision.backbones.weights import load_checkpoint
from mobilevision.tasks import TASKS, build_model
from mobilevision.tasks.trainer import TrainingError, checkpoint_state, train

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def trained_run(shapes_folders, tiny_overrides, tmp_path_factory):
    """A 2-epoch run on the shapes folders plus two unreadable files users send: a truncated
    JPEG in train and an empty PNG in val (both must be skipped, counted and reported)."""
    import shutil

    base = tmp_path_factory.mktemp("trained")
    data = base / "data"
    shutil.copytree(shapes_folders, data)
    good = sorted((data / "train").rglob("*.jpg"))[0].read_bytes()
    (data / "train" / "star" / "cut.jpg").write_bytes(good[: len(good) // 3])
    (data / "val" / "circle" / "empty.png").write_bytes(b"")
    cfg = mv.load_config("shapes_classifier.yaml",
                         tiny_overrides(data, **{"train.steps_per_epoch": 3}))
    results = train(cfg, output=base / "run")
    return cfg, base / "run", results


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_directory_holds_config_checkpoints_metrics_logs_and_plots(trained_run, png_size):
    cfg, out, results = trained_run
    saved = mv.load_config(out / "config.yaml")
    assert saved.model.input_size == [64, 64] and saved.train.epochs == 2
    assert (out / "config.yaml").read_text().startswith(f"# resolved by mobilevision {mv.__version__}")
    assert (out / "labels.txt").read_text().split() == ["circle", "hexagon", "square", "star", "triangle"]
    assert checkpoint_state(out / "checkpoints" / "last.weights.h5")["epoch"] == 2
    best = checkpoint_state(out / "checkpoints" / "best.weights.h5")
    assert best["monitor"] == "top1" and 0.0 <= best["best"] <= 1.0
    rows = _rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"loss", "top1", "top5", "val_cross_entropy", "val_top1", "val_top5",
            "lr"} <= set(rows[0])
    assert any((out / "logs").rglob("events.out.tfevents.*"))
    for name in ("curves", "confusion_matrix", "samples"):   # and the same in TensorBoard
        png_size(out / "plots" / f"{name}.png")
    data = json.loads((out / "data.json").read_text())            # written before training
    assert data["splits"]["train"]["images"] == 41 and data["splits"]["val"]["images"] == 16
    assert data["splits"]["val"]["images_per_class"]["circle"] == 4 and not data["warnings"]
    written = json.loads((out / "eval.json").read_text())
    assert written["top1"] == pytest.approx(results["top1"])
    assert written["num_examples"] == 15  # 16 listed, the empty PNG counts in no metric
    skipped = written["skipped_files"]  # reported at the end of the run, with the reasons
    assert any(p.endswith("train/star/cut.jpg") and "truncated" in r for p, r in skipped.items())
    assert any(p.endswith("val/circle/empty.png") and "empty" in r for p, r in skipped.items())
    assert written["top1"] == pytest.approx(best["best"], abs=1e-6)  # eval.json is the best epoch
    assert not list((out / "checkpoints").glob(".*tmp*"))  # no temporary files left behind
    startup = json.loads((out / "startup.json").read_text())  # where the wait before step 1 went
    phases = startup["phases"]
    assert {"data index", "model", "input pipeline", "compile", "first step",
            "second step"} <= set(phases)
    assert all(v >= 0 for v in phases.values()) and phases["first step"] > 0
    assert "start-up" not in phases  # train() called from Python: counted from that call
    assert startup["seconds_to_first_step"] == pytest.approx(
        sum(v for k, v in phases.items() if k != "second step"), abs=0.05)


def test_existing_run_is_kept_unless_resume_or_overwrite(trained_run):
    cfg, out, _ = trained_run
    with pytest.raises(TrainingError, match="already holds a training run; pass --resume"):
        train(cfg, output=out)


def test_evaluate_command_prints_metrics_as_last_line(trained_run, capsys):
    _, out, results = trained_run
    (out / "plots" / "samples.png").unlink()
    assert main(["evaluate", "--config", str(out / "config.yaml")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    metrics = json.loads(lines[-1])
    assert metrics["top1"] == pytest.approx(results["top1"], abs=1e-6)
    assert set(metrics) >= {"top1", "top5", "cross_entropy", "num_examples"}
    # Before it, the per-class table; the pictures are drawn again.
    table = lines[-8:-1]
    assert table[0].split() == ["class", "accuracy"] and table[-1].split()[0] == "mean"
    assert [line.split()[0] for line in table[1:-1]] == ["circle", "hexagon", "square", "star",
                                                         "triangle"]
    assert (out / "plots" / "samples.png").exists()
    saved = json.loads((out / "eval.json").read_text())["per_class_accuracy"]
    assert float(table[1].split()[1]) == pytest.approx(saved["circle"], abs=1e-4)


def test_predict_command_writes_images_and_json(trained_run, shapes_folders, tmp_path):
    _, out, _ = trained_run
    folder = shapes_folders / "val" / "star"
    assert main(["predict", "--config", str(out / "config.yaml"), "--input", str(folder),
                 "--output", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "predictions.json").read_text())
    assert len(results) == 3 and len(list(tmp_path.glob("*.jpg"))) == 3
    assert all(r["predictions"][0]["class"] in {"circle", "hexagon", "square", "star", "triangle"}
               for r in results)


def _layer_arrays(path):
    """{save path: array} of every layer variable in a Keras weights file (no optimizer)."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f["layers"].visititems(lambda name, obj: out.__setitem__(name, obj[()])
                               if isinstance(obj, h5py.Dataset) else None)
    return out


def test_run_checkpoint_round_trips_exactly(trained_run, tmp_path):
    """The run's checkpoint loads into a model built afresh from the run's config with Keras'
    own loader, and saving that model writes the same arrays back, bit for bit."""
    import numpy as np

    from mobilevision.tasks.trainer import find_checkpoint

    _, out, _ = trained_run
    best = find_checkpoint(out)
    assert best == out / "checkpoints" / "best.weights.h5"
    model = build_model(mv.load_config(out / "config.yaml"))
    load_checkpoint(model, best)
    model.save_weights(tmp_path / "again.weights.h5")
    saved, again = _layer_arrays(best), _layer_arrays(tmp_path / "again.weights.h5")
    assert saved.keys() == again.keys() and len(saved) > 200
    for key in saved:
        np.testing.assert_array_equal(again[key], saved[key], err_msg=key)


def test_checkpoint_of_another_config_is_a_one_line_error_naming_the_file(trained_run, capsys):
    _, out, _ = trained_run
    # The run's config with another width: the checkpoint cannot fit.
    assert main(["evaluate", "--config", str(out / "config.yaml"),
                 "model.backbone.alpha=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    best = out / "checkpoints" / "best.weights.h5"
    assert err[-1].startswith(f"error: Checkpoint {best} does not fit model ")
    assert "(a checkpoint of another config?)" in err[-1] and "Traceback" not in "".join(err)
    # The same file as --weights FILE (loaded as model.weights is): by name, listing the layers.
    assert main(["predict", "--config", str(out / "config.yaml"), "--input", str(out),
                 "--weights", str(best), "model.backbone.alpha=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: Weights file {best} does not fit model ")
    assert "layer(s) have mismatched shapes: " in err[-1] and "Traceback" not in "".join(err)


def test_commands_report_bad_input_without_traceback(capsys, tmp_path):
    assert main(["train", "--config", "shapes_classifier.yaml", "train.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.epoch'; did you mean 'train.epochs'" in err and "Traceback" not in err
    assert main(["predict", "--config", "shapes_classifier.yaml", "--input", str(tmp_path / "x.jpg"),
                 "--weights", str(tmp_path / "w.h5")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_unwritable_output_fails_before_training(shapes_folders, tiny_overrides, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = mv.load_config("shapes_classifier.yaml", tiny_overrides(shapes_folders))
    with pytest.raises(TrainingError, match="not writable"):
        train(cfg, output=blocker / "run")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
        shapes_folders, tiny_overrides, tmp_path, monkeypatch):
    """Weights turn NaN at the start of epoch 2 (as a diverging run's do): training stops at
    its first batch, and epoch 1's checkpoint stays, never overwritten with NaN weights."""
    import numpy as np

    from mobilevision.tasks import trainer

    class Diverge(trainer.EvalCallback):  # the evaluation, and a weight turned NaN
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.get_layer("predictions").kernel
                kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    monkeypatch.setattr(trainer, "EvalCallback", Diverge)
    cfg = mv.load_config("shapes_classifier.yaml",
                         tiny_overrides(shapes_folders, **{"train.steps_per_epoch": 3}))
    last = tmp_path / "run" / "checkpoints" / "last.weights.h5"
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, batch 1; training "
                                            r"stopped; last good checkpoint: .*last.weights.h5 "
                                            r"\(epoch 1\)"):
        train(cfg, output=tmp_path / "run")
    assert checkpoint_state(last)["epoch"] == 1
    assert [int(r["epoch"]) for r in _rows(tmp_path / "run" / "metrics.csv")] == [1]
    model = build_model(cfg)
    load_checkpoint(model, last)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_sigkill_while_a_checkpoint_is_written_leaves_the_last_one_and_resume_finishes(
        shapes_folders, tiny_overrides, tmp_path):
    """SIGKILL in the middle of writing epoch 2's checkpoint (the hardest moment: a file is half
    written): the last complete checkpoint stays readable and --resume finishes the run."""
    out = tmp_path / "run"
    steps = 4
    args = [sys.executable, str(SCRIPTS / "train.py"), "--config", "shapes_classifier.yaml",
            "--output", str(out),
            *tiny_overrides(shapes_folders, **{"train.epochs": 3, "train.steps_per_epoch": steps})]
    ckpts = out / "checkpoints"
    last = ckpts / "last.weights.h5"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    writing = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if last.exists() and checkpoint_state(last)["epoch"] >= 1:
                break
            time.sleep(0.02)
        # Epoch 1 is saved; kill as soon as the next checkpoint file appears, mid-write.
        while time.time() < deadline and proc.poll() is None and not writing:
            writing = list(ckpts.glob(".*.tmp.weights.h5"))
            if not writing:
                time.sleep(0.001)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert writing, "no checkpoint write was caught"
    assert any(p.exists() for p in writing)  # the half-written file is still there ...
    killed_at = checkpoint_state(last)["epoch"]  # ... and the last complete one reads
    assert killed_at == 1
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {out} from epoch {killed_at} of 3" in done.stdout
    assert checkpoint_state(last)["epoch"] == 3
    assert not list(ckpts.glob(".*.tmp*"))  # the killed run's partial file was removed
    assert [int(r["epoch"]) for r in _rows(out / "metrics.csv")] == [1, 2, 3]
    # Optimizer state came back too: the step counter covers all three epochs.
    cfg = mv.load_config(out / "config.yaml")
    model = build_model(cfg)
    TASKS[cfg.task].compile(model, cfg, steps)
    model.optimizer.build(model.trainable_variables)
    load_checkpoint(model, last)  # as the resume did
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3 * steps


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """A full disk while saving: a clear error naming the checkpoint, the temporary file
    removed, the previous checkpoint untouched."""
    import errno

    from mobilevision.tasks.trainer import AtomicCheckpoint

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    callback = AtomicCheckpoint(tmp_path, "top1", "max")
    callback.set_model(model)
    callback.on_epoch_end(0, {"val_top1": 0.5})
    before = (tmp_path / "last.weights.h5").read_bytes()

    def full_disk(path, *a, **k):
        Path(path).write_bytes(b"\0" * 100)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model, "save_weights", full_disk)
    with pytest.raises(TrainingError, match=r"could not write checkpoint .*best.weights.h5 after "
                                            r"epoch 2: No space left on device; .* \(epoch 1\) is kept"):
        callback.on_epoch_end(1, {"val_top1": 0.9})
    assert (tmp_path / "last.weights.h5").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.weights.h5", "last.weights.h5"]


def test_too_little_free_space_fails_before_training(shapes_folders, tiny_overrides, tmp_path,
                                                      monkeypatch):
    from collections import namedtuple

    from mobilevision.tasks import trainer

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(trainer.shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 5 << 20))
    cfg = mv.load_config("shapes_classifier.yaml", tiny_overrides(shapes_folders))
    with pytest.raises(TrainingError, match=r"has 5.0 MiB free; a run of this model needs about "
                                            r"\d+\.\d MiB"):
        train(cfg, output=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_fine_tuning_a_run_on_other_classes_lists_what_loaded_and_freezes(
        trained_run, shapes_folders, tiny_overrides, tmp_path, capsys):
    """A user's own three classes, starting from the five-class run (`model.weights` names the
    run folder): every layer but the classifier's `predictions` loads, the console and
    weights.json say so by layer, and with train.freeze_backbone_epochs=1 the backbone stays
    as loaded through the first epoch and trains in the second."""
    import shutil

    import numpy as np

    from mobilevision.tasks.base import weights_report

    _, run, _ = trained_run
    data = tmp_path / "three"
    for split in ("train", "val"):
        for name in ("circle", "square", "star"):
            shutil.copytree(shapes_folders / split / name, data / split / name)
    out = tmp_path / "fine"
    overrides = tiny_overrides(data, **{"model.num_classes": 3, "model.weights": str(run),
                                        "data.synthetic": "null",
                                        "train.freeze_backbone_epochs": 1, "train.epochs": 2,
                                        "train.steps_per_epoch": 2})
    cfg = mv.load_config("shapes_classifier.yaml", overrides)
    before = build_model(cfg)
    report = weights_report(before)
    fresh = [entry[0] for entry in report.fresh]
    assert fresh == ["predictions"] and len(report.loaded) > 100
    capsys.readouterr()
    train(cfg, output=out)
    console = capsys.readouterr().out
    assert "1 started fresh: predictions" in console
    listing = json.loads((out / "weights.json").read_text())
    assert "predictions" in json.dumps(listing) and str(run) in json.dumps(listing)

    def backbone_kernel(model):
        return np.array(model.get_layer("mobilenet_v2").get_layer("Conv1").kernel)

    last = build_model(mv.load_config(out / "config.yaml", ["model.weights=null"]))
    load_checkpoint(last, out / "checkpoints" / "last.weights.h5")
    assert not np.array_equal(backbone_kernel(last), backbone_kernel(before))  # trained in epoch 2
