"""The trainer that runs any task with `model.fit`, and the run directory it fills.

    runs/<name>/config.yaml              resolved config (repeat the run with --config this file)
    runs/<name>/labels.txt               class names in label order
    runs/<name>/checkpoints/last.weights.h5   weights + optimizer state + epoch, written atomically
    runs/<name>/checkpoints/best.weights.h5   the epoch with the best validation main metric
    runs/<name>/metrics.csv              one row per epoch (column `epoch` counts from 1)
    runs/<name>/logs/                    TensorBoard
    runs/<name>/eval.json                metrics of the best checkpoint on the validation split
    runs/<name>/plots/curves.png         loss and metric curves
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np

from mobilevision.config import load_config, save_config
from mobilevision.utils import atomic_write_json, atomic_write_text, set_seed
from mobilevision.version import __version__

LAST = "last.weights.h5"
BEST = "best.weights.h5"


class TrainingError(RuntimeError):
    """Training cannot start or had to stop; the message says why and what was kept."""


def run_dir_for(cfg, output=None) -> Path:
    return Path(output or cfg.get("output") or Path("runs") / cfg.name)


def checkpoint_state(path) -> dict:
    """{'epoch': completed epochs, 'best': best monitored value or None, 'monitor': name}."""
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            best = float(a["best"]) if "best" in a and not np.isnan(a["best"]) else None
            return {"epoch": int(a["epoch"]), "best": best, "monitor": str(a.get("monitor", ""))}
    except (OSError, KeyError) as e:
        raise TrainingError(f"{path}: not a readable mobilevision checkpoint ({e})") from None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves `last` every epoch and `best` when the validation main metric improves.

    Each file is written under a temporary name, stamped with the epoch, fsynced and renamed over
    the old one, so a kill at any moment leaves the previous complete checkpoint readable."""

    def __init__(self, folder: Path, monitor: str, mode: str, best=None, guard=None):
        super().__init__()
        self.folder, self.monitor, self.mode, self.best = Path(folder), monitor, mode, best
        self.guard = guard
        self.folder.mkdir(parents=True, exist_ok=True)

    def _better(self, value) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _write(self, target: str, epoch: int) -> None:
        tmp = self.folder / f".{target}.{os.getpid()}.tmp.weights.h5"
        self.model.save_weights(tmp)
        with h5py.File(tmp, "a") as f:
            f.attrs["epoch"] = epoch
            f.attrs["best"] = np.nan if self.best is None else float(self.best)
            f.attrs["monitor"] = self.monitor
            f.attrs["mobilevision_version"] = __version__
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / target)
        _fsync_dir(self.folder)

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.bad:
            return  # never save weights that produced NaN
        logs = logs or {}
        value = logs.get(f"val_{self.monitor}")
        improved = self._better(None if value is None else float(value))
        if improved:
            self.best = float(value)
            self._write(BEST, epoch + 1)
        self._write(LAST, epoch + 1)


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, before anything is checkpointed."""

    def __init__(self):
        super().__init__()
        self.bad = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.bad = (self._epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch


class MetricsLog(keras.callbacks.Callback):
    """metrics.csv with one row per completed epoch, rewritten atomically. On resume, rows of
    epochs the checkpoint does not cover are dropped so the file matches the weights."""

    def __init__(self, path: Path, initial_epoch: int, guard=None):
        super().__init__()
        self.path, self.guard, self.rows = Path(path), guard, []
        if initial_epoch and self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= initial_epoch]
        self._t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.bad:
            return
        row = {"epoch": epoch + 1}
        try:
            row["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except Exception:  # pragma: no cover - exotic optimizers
            pass
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row["epoch_seconds"] = round(time.time() - self._t0, 2)
        self.rows.append(row)
        fields = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


class SkipReport(keras.callbacks.Callback):
    """Prints, once each, the input files the pipeline skipped as unreadable."""

    def on_epoch_end(self, epoch, logs=None):
        report_skips()


def report_skips() -> None:
    from mobilevision.data.skips import SKIPPED

    new = SKIPPED.new_since_last_report()
    if new:
        print(f"skipped {len(new)} unreadable file(s) (total {len(SKIPPED)}):", file=sys.stderr)
        for path, reason in list(new.items())[:20]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(new) > 20:
            print(f"  ... and {len(new) - 20} more", file=sys.stderr)


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    """Loss and metric curves (train and validation) from metrics.csv into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    names = [k for k in rows[0] if k not in ("epoch", "lr", "epoch_seconds") and not k.startswith("val_")]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for key, style in ((name, "-"), (f"val_{name}", "--")):
            pts = [(e, float(r[key])) for e, r in zip(epochs, rows) if r.get(key) not in (None, "")]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_png)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"output folder {folder} is not writable: {e.strerror}") from None


def set_precision(cfg) -> None:
    keras.mixed_precision.set_global_policy(cfg.train.precision)


def train(cfg, *, output=None, resume: bool = False, overwrite: bool = False,
          overrides=()) -> dict:
    """Train `cfg` end to end; returns the evaluation dict also written to eval.json.

    resume: continue from checkpoints/last (weights, optimizer state and epoch) using the run's
    saved config; `overrides` apply on top of it (e.g. train.epochs=20 to extend a run)."""
    from mobilevision.tasks import get_task

    run = run_dir_for(cfg, output)
    ckpt_dir = run / "checkpoints"
    last = ckpt_dir / LAST
    if resume and (run / "config.yaml").exists():
        cfg = load_config(run / "config.yaml", overrides)
    elif last.exists() and not (resume or overwrite):
        raise TrainingError(f"{run} already holds a training run; pass --resume to continue it, "
                            f"--overwrite to start it again, or --output for a new folder")
    _check_writable(run)
    cfg["output"] = str(run)
    save_config(cfg, run / "config.yaml")
    set_seed(cfg.seed)
    set_precision(cfg)

    task = get_task(cfg)
    task.prepare_data()
    train_ds, n_train = task.build_dataset(cfg.data.train_split, training=True)
    val_ds = task.build_dataset(cfg.data.val_split, training=False)[0] if task.fit_validation else None
    names = getattr(task, "class_names", None)
    if names:
        atomic_write_text(run / "labels.txt", "\n".join(names) + "\n")
    # Repeat and count steps: an epoch stays the same length when unreadable files are skipped.
    steps = cfg.train.steps_per_epoch or task.steps_per_epoch(n_train)
    train_ds = train_ds.repeat()

    model = task.build_model()
    task.compile(model, steps)
    initial_epoch, best = 0, None
    if resume and last.exists():
        state = checkpoint_state(last)
        model.optimizer.build(model.trainable_variables)
        model.load_weights(last)
        initial_epoch, best = state["epoch"], state["best"]
        print(f"resuming {run} from epoch {initial_epoch} of {cfg.train.epochs}")
    elif resume:
        print(f"nothing to resume in {run} (no {last}); starting from epoch 0")

    guard = NaNGuard()
    callbacks = [
        guard,
        *task.callbacks(run),
        AtomicCheckpoint(ckpt_dir, task.monitor, task.monitor_mode, best, guard),
        MetricsLog(run / "metrics.csv", initial_epoch, guard),
        SkipReport(),
        keras.callbacks.TensorBoard(run / "logs", write_graph=False, update_freq="epoch",
                                    profile_batch=0),
    ]
    verbose = cfg.train.verbose
    verbose = "auto" if verbose == "auto" else int(verbose)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if initial_epoch < cfg.train.epochs:
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.train.epochs,
                  initial_epoch=initial_epoch, steps_per_epoch=steps,
                  validation_freq=cfg.train.eval_every, callbacks=callbacks, verbose=verbose,
                  shuffle=False)  # the tf.data pipeline shuffles, seeded
    if guard.bad:
        epoch, batch, loss = guard.bad
        kept = f"last good checkpoint: {last} (epoch {checkpoint_state(last)['epoch']})" \
            if last.exists() else "no checkpoint was written before it"
        raise TrainingError(f"loss became {loss} at epoch {epoch}, batch {batch}; training "
                            f"stopped; {kept}. Lower train.optimizer.learning_rate or set "
                            f"train.optimizer.clipnorm.")
    if (run / "metrics.csv").exists():
        plot_curves(run / "metrics.csv", run / "plots" / "curves.png")
    return evaluate_run(cfg, run, task=task, model=model)


def evaluate_run(cfg, run: Path, *, weights=None, task=None, model=None, split=None) -> dict:
    """Evaluate `weights` (default: the run's best, else last checkpoint) on `split` (default the
    validation split) and write run/eval.json. Returns the metrics."""
    from mobilevision.backbones.weights import load_weights_by_name
    from mobilevision.data.skips import SKIPPED
    from mobilevision.tasks import get_task

    task = task or get_task(cfg)
    split = split or cfg.data.val_split
    if weights is None:
        for name in (BEST, LAST):
            if (run / "checkpoints" / name).exists():
                weights = run / "checkpoints" / name
                break
    if model is None:
        set_precision(cfg)
        task.prepare_data()
        model = task.build_model()
        task.compile(model, steps_per_epoch=1)  # for the loss and metrics; no training here
    if weights is not None:
        load_weights_by_name(model, weights, allow_unused=True)
    elif not cfg.model.weights:
        print("warning: evaluating an untrained model (no checkpoint and no model.weights)",
              file=sys.stderr)
    results = task.evaluate(model, split, out_dir=run)
    results["weights"] = str(weights or cfg.model.weights)
    results["skipped_files"] = SKIPPED.items()
    report_skips()
    atomic_write_json(run / "eval.json", results)
    return results


def dumps_metrics(results: dict) -> str:
    """One-line JSON of the numeric metrics (what `evaluate` prints last)."""
    return json.dumps({k: v for k, v in results.items() if isinstance(v, (int, float, str))})
