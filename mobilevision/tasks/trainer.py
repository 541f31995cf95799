"""The trainer that runs any task with `model.fit`, and the run directory it fills.

    runs/<name>/config.yaml              resolved config (repeat the run with --config this file)
    runs/<name>/labels.txt               class names in label order
    runs/<name>/checkpoints/last.weights.h5   weights + optimizer state + epoch, written atomically
    runs/<name>/checkpoints/best.weights.h5   the epoch with the best validation main metric
    runs/<name>/metrics.csv              one row per epoch (column `epoch` counts from 1)
    runs/<name>/logs/                    TensorBoard
    runs/<name>/data.json                the data report, written before training
    runs/<name>/startup.json             seconds from the command (or the train call) to the
                                         first train step, by phase (StartupClock)
    runs/<name>/weights.json             with model.weights or model.backbone.weights: each
                                         layer loaded from the file or started fresh
    runs/<name>/eval.json                metrics of the best checkpoint on the validation split
    runs/<name>/plots/curves.png         loss and metric curves, redrawn at each evaluation
    runs/<name>/plots/*.png              the best checkpoint's evaluation (mobilevision.plots):
                                         samples.png, confusion_matrix.png, pr_curve.png, ...
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np

from mobilevision.config import load_config, save_config
from mobilevision.plots import plot_curves
from mobilevision.runs import (BEST, LAST, TMP_SUFFIX, TrainingError, checkpoint_state,  # noqa: F401
                               dumps_metrics, find_checkpoint, run_dir_for)
from mobilevision.utils import atomic_write_json, atomic_write_text, set_seed
from mobilevision.version import __version__

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

    def __init__(self, folder: Path, monitor: str, mode: str, best=None):
        super().__init__()
        self.folder, self.monitor, self.mode, self.best = Path(folder), monitor, mode, best
        self.folder.mkdir(parents=True, exist_ok=True)

    def _better(self, value) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _write(self, target: str, epoch: int) -> None:
        tmp = self.folder / f".{target}.{os.getpid()}{TMP_SUFFIX}"
        try:
            self.model.save_weights(tmp)
            with h5py.File(tmp, "a") as f:
                f.attrs["epoch"] = epoch
                f.attrs["best"] = np.nan if self.best is None else float(self.best)
                f.attrs["monitor"] = self.monitor
                f.attrs["mobilevision_version"] = __version__
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / target)
        except (OSError, RuntimeError) as e:  # full disk, quota, folder removed (h5py can
            tmp.unlink(missing_ok=True)          # raise RuntimeError on flush): keep the old one
            old = self.folder / target
            try:
                kept = f"{old} (epoch {checkpoint_state(old)['epoch']}) is kept" \
                    if old.exists() else "no earlier one exists"
            except TrainingError:
                kept = "the earlier one is unreadable too"
            raise TrainingError(f"could not write checkpoint {old} after epoch {epoch}: "
                                f"{getattr(e, 'strerror', None) or e}; {kept}") from None
        _fsync_dir(self.folder)

    def on_epoch_end(self, epoch, logs=None):
        # (An epoch with a non-finite loss never ends: NaNGuard leaves fit at once.)
        logs = logs or {}
        value = logs.get(f"val_{self.monitor}")
        improved = self._better(None if value is None else float(value))
        if improved:
            self.best = float(value)
            self._write(BEST, epoch + 1)
        self._write(LAST, epoch + 1)


class NonFiniteLoss(Exception):
    """Raised by NaNGuard to leave `fit` at once: no validation, evaluation or checkpoint runs
    on the weights that produced it (`stop_training` would still run the epoch's end)."""


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, before anything is checkpointed. Under
    tf.distribute the logged loss is the global one, so every worker stops at the same step."""

    def __init__(self):
        super().__init__()
        self.bad = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.bad = (self._epoch + 1, batch + 1, float(loss))
            raise NonFiniteLoss(self.bad)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch


class MetricsLog(keras.callbacks.Callback):
    """metrics.csv with one row per completed epoch, rewritten atomically. On resume, rows of
    epochs the checkpoint does not cover are dropped so the file matches the weights."""

    def __init__(self, path: Path, initial_epoch: int):
        super().__init__()
        self.path, self.rows = Path(path), []
        if initial_epoch and self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= initial_epoch]
        self._t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
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


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux's /proc), None where that cannot be read:
    what the interpreter's start and the imports took before `train` was called."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


# Set by the `train` command (mobilevision.cli) before it calls `train`: then the process's
# own start is where the wait began. Called from Python, the process may be hours old (a
# notebook), so the clock starts when `train` is called.
STARTED_BY_COMMAND = False


class StartupClock(keras.callbacks.Callback):
    """Where the time from the command (or the `train` call) to the first train step goes:
    `mark(phase)` as each phase of `train` ends (start-up, i.e. interpreter and imports, from the
    process's own start when STARTED_BY_COMMAND), then as a callback the first step (the first
    batch drawn, the train function traced and run once) and the second (what a step costs once
    traced). The chief writes the split to `startup.json` when the second step ends, and prints
    it after the first epoch."""

    def __init__(self, path: Path | None = None):
        super().__init__()
        self.path, self.phases = path, {}
        self._t = time.perf_counter()
        since_start = seconds_since_process_start() if STARTED_BY_COMMAND else None
        if since_start is not None:
            self.phases["start-up"] = round(since_start, 2)
        self._start = "the command" if STARTED_BY_COMMAND else "train() was called"
        self._steps, self._printed = 0, False

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self._t, 2)
        self._t = now

    def on_train_begin(self, logs=None):
        self.mark("other")  # checks, callbacks and fit's own set-up since the last mark

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._steps == 1:
            self.mark("first step")
        elif self._steps == 2:
            self.mark("second step")
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        if self._steps == 1:  # a one-step epoch: no second step to wait for
            self._write()
        if not self._printed and self.path is not None:
            self._printed = True
            print(self.describe())

    def total(self) -> float:
        return round(sum(v for k, v in self.phases.items() if k != "second step"), 2)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.phases.items()
                          if k != "second step" and v >= 0.05)
        later = self.phases.get("second step")
        later = f"; the next step took {later:.2f} s" if later is not None else ""
        return f"first train step {self.total():.1f} s after {self._start} ({parts}){later}"

    def _write(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, {"seconds_to_first_step": self.total(),
                                          "phases": self.phases})


class SkipReport(keras.callbacks.Callback):
    """Prints, once each, the input files the pipeline skipped as unreadable."""

    def on_epoch_end(self, epoch, logs=None):
        from mobilevision.data.skips import report_skips

        report_skips()


class CurvesPlot(keras.callbacks.Callback):
    """Redraws plots/curves.png from metrics.csv after each epoch that has validation results
    (MetricsLog must run first), so a killed run keeps a current picture, and at the end of
    training when the last epoch had none."""

    def __init__(self, metrics_csv: Path, out_png: Path, monitor: str, mode: str):
        super().__init__()
        self.args = (Path(metrics_csv), Path(out_png), monitor, mode)
        self.current = True  # nothing new since the last drawing

    def on_epoch_end(self, epoch, logs=None):
        self.current = any(k.startswith("val_") for k in (logs or {}))
        if self.current:
            plot_curves(*self.args)

    def on_train_end(self, logs=None):
        if not self.current:
            plot_curves(*self.args)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"output folder {folder} is not writable: {e.strerror}") from None


def checkpoint_bytes(model) -> int:
    """About the size of one checkpoint: the model's variables and the optimizer's."""
    variables = list(model.weights)
    if model.optimizer is not None and model.optimizer.built:
        variables += list(model.optimizer.variables)
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def _check_free_space(folder: Path, checkpoint: int) -> None:
    """Refuse to start when the output folder cannot hold the run: two checkpoints (last and
    best), the one being written, and 32 MiB for logs, metrics and plots; checkpoints already
    there (a resumed run) are replaced in place and count as room."""
    there = sum((folder / "checkpoints" / n).stat().st_size for n in (LAST, BEST)
                if (folder / "checkpoints" / n).exists())
    need = max(0, 3 * checkpoint + (32 << 20) - there)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise TrainingError(f"output folder {folder} has {free / 2**20:.1f} MiB free; a run of "
                            f"this model needs about {need / 2**20:.1f} MiB (checkpoints of "
                            f"{checkpoint / 2**20:.1f} MiB); free space or pass --output")


def _remove_stale_temporaries(run: Path) -> None:
    """Temporary files of a killed run (a checkpoint or a file it was writing): never read."""
    for tmp in [*(run / "checkpoints").glob(f".*{TMP_SUFFIX}"), *run.glob(".*.tmp"),
                *(run / "plots").glob("**/.*.tmp")]:
        tmp.unlink(missing_ok=True)


def weights_fingerprint(model) -> str:
    """SHA-1 of the model's weights, to compare workers (and checkpoints) exactly."""
    import hashlib

    digest = hashlib.sha1()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def set_precision(cfg) -> None:
    keras.mixed_precision.set_global_policy(cfg.train.precision)


def train(cfg, *, output=None, resume: bool = False, overwrite: bool = False,
          overrides=()) -> dict:
    """Train `cfg` end to end; returns the evaluation dict also written to eval.json.

    resume: continue from checkpoints/last (weights, optimizer state and epoch) using the run's
    saved config; `overrides` apply on top of it (e.g. train.epochs=20 to extend a run).

    Under `distribute.strategy: multi_worker` every worker runs this with the same config; the
    chief alone writes the run folder and evaluates, the others return
    {"worker": index, "weights_sha1": ...}."""
    from mobilevision.data.shapes import prepare_data
    from mobilevision.backbones.weights import load_checkpoint
    from mobilevision.data.sources import source_for
    from mobilevision.tasks import TASKS, build_model
    from mobilevision.tasks.base import weights_report
    from mobilevision.tasks import distribute as dist
    from mobilevision.workarounds import patch_fit

    clock = StartupClock()
    run = run_dir_for(cfg, output)
    ckpt_dir = run / "checkpoints"
    last = ckpt_dir / LAST
    if resume and (run / "config.yaml").exists():
        cfg = load_config(run / "config.yaml", overrides)
    try:
        strategy = dist.make_strategy(cfg)  # first: nothing else may start TensorFlow before
    except dist.DistributeError as e:
        raise TrainingError(str(e)) from None
    kind, index, chief = dist.worker_role(strategy)
    replicas = strategy.num_replicas_in_sync
    multi_worker = dist.is_multi_worker(strategy)
    if cfg.train.batch_size % replicas:
        raise TrainingError(f"train.batch_size={cfg.train.batch_size} is the global batch and "
                            f"must be a multiple of the {replicas} replicas")
    problem = None
    if chief:
        try:
            if last.exists() and not (resume or overwrite):
                raise TrainingError(f"{run} already holds a training run; pass --resume to "
                                    f"continue it, --overwrite to start it again, or --output "
                                    f"for a new folder")
            _check_writable(run)
            _remove_stale_temporaries(run)
            cfg["output"] = str(run)
            save_config(cfg, run / "config.yaml")
        except TrainingError as e:
            problem = e
    _stop_together(dist, strategy, problem, kind, index)
    set_seed(cfg.seed)
    set_precision(cfg)
    if replicas > 1:
        where = f"{kind} {index}, " if multi_worker else ""
        print(f"{where}distribute.strategy={cfg.distribute.strategy}: {replicas} replicas, global "
              f"batch {cfg.train.batch_size}, {cfg.train.batch_size // replicas} per replica")

    task = TASKS[cfg.task]
    clock.mark("set-up")
    prepare_data(cfg)
    clock.mark("data generation")
    source = source_for(cfg)
    clock.mark("data index")
    # The model first: a detector's anchors, which its training targets need, come from the
    # maps its head built.
    with strategy.scope():
        model = build_model(cfg)
    clock.mark("model")
    train_ds, n_train = _training_data(source, model, strategy)
    clock.mark("input pipeline")
    names = source.class_names
    report = weights_report(model)
    if chief and report is not None and not (resume and last.exists()):
        # Fine-tuning or ImageNet weights: which layers came from the file, which start fresh.
        print(report.describe())
        atomic_write_text(run / "weights.json", report.to_json())
    if chief:
        atomic_write_text(run / "labels.txt", "\n".join(names) + "\n")
        from mobilevision.report import write_data_report

        write_data_report(source, [cfg.data.train_split, cfg.data.val_split], run)
    clock.mark("data report")
    # The training data repeats; an epoch is counted in steps, so it stays the same length when
    # unreadable files are skipped.
    steps = cfg.train.steps_per_epoch or max(1, n_train // cfg.train.batch_size)

    initial_epoch, best = 0, None
    with strategy.scope():
        if replicas > 1 and cfg.distribute.sync_batchnorm:
            dist.synchronize_batchnorm(model)
        # In the scope: the optimizer, built here, gets distributed slots (sized for the check).
        task.compile(model, cfg, steps)
        if resume and last.exists():
            state = checkpoint_state(last)
            load_checkpoint(model, last)
            initial_epoch, best = state["epoch"], _best_so_far(ckpt_dir, task.monitor_mode)
    local = LocalView(model, cfg)
    patch_fit(model)  # only what this model's strategy needs (workarounds.fit_fixes)
    if multi_worker:
        try:
            dist.agree_on(strategy, initial_epoch, "the epoch to resume from")
        except dist.DistributeError as e:
            raise TrainingError(str(e)) from None
    if initial_epoch:
        print(f"resuming {run} from epoch {initial_epoch} of {cfg.train.epochs}")
    elif resume:
        print(f"nothing to resume in {run} (no {last}); starting from epoch 0")
    problem = None
    if chief:
        try:
            _check_free_space(run, checkpoint_bytes(model))
        except TrainingError as e:
            problem = e
    _stop_together(dist, strategy, problem, kind, index)

    clock.mark("compile")
    guard = NaNGuard()
    if chief:
        clock.path = run / "startup.json"
    callbacks = [guard, clock]
    if cfg.train.freeze_backbone_epochs:  # every worker: it changes what the step trains
        from mobilevision.freeze import FreezeBackbone

        callbacks.append(FreezeBackbone(cfg.train.freeze_backbone_epochs))
    if chief:  # the other workers train in step with it but write nothing
        callbacks += [
            EvalCallback(task, local, cfg, names),
            AtomicCheckpoint(ckpt_dir, task.monitor, task.monitor_mode, best),
            MetricsLog(run / "metrics.csv", initial_epoch),
            CurvesPlot(run / "metrics.csv", run / "plots" / "curves.png", task.monitor,
                       task.monitor_mode),
            SkipReport(),
            keras.callbacks.TensorBoard(run / "logs", write_graph=False, update_freq="epoch",
                                        profile_batch=0),
        ]
    verbose = cfg.train.verbose
    verbose = "auto" if verbose == "auto" else int(verbose)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if initial_epoch < cfg.train.epochs:
        try:
            model.fit(train_ds, epochs=cfg.train.epochs, initial_epoch=initial_epoch,
                      steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                      shuffle=False)  # the tf.data pipeline shuffles, seeded
        except NonFiniteLoss:
            pass  # guard.bad says where; reported below
        except Exception as e:
            if multi_worker and isinstance(e, dist.peer_failures()):
                lines = [line.strip() for line in str(e).splitlines()]
                detail = next((line for line in lines if "abort" in line.lower()),
                              type(e).__name__)
                raise TrainingError(
                    f"{kind} {index}: another worker left the cluster ({detail}); the chief's "
                    f"last complete checkpoint is kept; restart every worker with --resume"
                    ) from None
            if isinstance(e, OSError):  # a log, metrics.csv or a plot on a full disk
                raise TrainingError(f"could not write {e.filename or run}: {e.strerror or e}; "
                                    f"checkpoints written so far are kept; --resume continues"
                                    ) from None
            raise
    if guard.bad:
        epoch, batch, loss = guard.bad
        if not chief:
            kept = "the chief keeps the last good checkpoint"
        elif last.exists():
            kept = f"last good checkpoint: {last} (epoch {checkpoint_state(last)['epoch']})"
        else:
            kept = "no checkpoint was written before it"
        raise TrainingError(f"loss became {loss} at epoch {epoch}, batch {batch}; training "
                            f"stopped; {kept}. Lower train.optimizer.learning_rate or set "
                            f"train.optimizer.clipnorm.")
    if multi_worker:
        sha1 = weights_fingerprint(model)
        print(f"{kind} {index}: final weights sha1 {sha1}")
        if not chief:
            return {"worker": index, "weights_sha1": sha1}
    # Evaluate the best checkpoint on one device: a distributed model's predict answers once
    # per replica.
    return evaluate_run(cfg, run, local(), names)


def _stop_together(dist, strategy, problem, kind, index) -> None:
    """Raise `problem` (the chief's, found before training); in a multi-worker run every worker
    learns first whether the chief has one, so all stop together instead of the others waiting
    in a collective for a chief that has gone."""
    try:
        ready = dist.all_ready(strategy, problem is None)
    except dist.DistributeError as e:
        raise TrainingError(f"{kind} {index}: {e}") from None
    if problem is not None:
        raise problem
    if not ready:
        raise TrainingError(f"{kind} {index}: the chief stopped before training; see its error")


def _best_so_far(folder: Path, mode: str):
    """The best monitored value the checkpoints record: `last` stamps it, and so does `best`,
    which is renamed first and can be one epoch ahead when a run was killed between the two."""
    values = []
    for name in (LAST, BEST):
        if (folder / name).exists():
            try:
                value = checkpoint_state(folder / name)["best"]
            except TrainingError:
                continue
            if value is not None:
                values.append(value)
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def _training_data(source, model, strategy):
    """-> (the training data for `fit`, repeated, number of examples in the split).

    Where each worker has its own input pipeline (multi_worker, tpu: `dist.shards_input`), each
    builds the dataset of its own share, read and decoded alone, in per-replica batches
    (tf.distribute's InputContext); the workers' batch k together are one device's batch k.
    Otherwise one dataset of global batches, which a `mirrored` strategy splits over the
    devices. Repeated, with `steps_per_epoch` counted from the split: an epoch stays the same
    length when unreadable files are skipped, and a worker whose share runs out first never
    leaves the others waiting in an all-reduce."""
    from mobilevision.tasks import distribute as dist
    from mobilevision.tasks import training_dataset

    cfg = source.cfg

    def dataset(input_context=None):
        return training_dataset(cfg, model, source, input_context)

    if not dist.shards_input(strategy):
        ds, n = dataset()
        return ds.repeat(), n
    counts = []

    def share(input_context):
        ds, n = dataset(input_context)
        count = input_context.num_input_pipelines
        print(f"input pipeline {input_context.input_pipeline_id + 1} of {count}: reads "
              f"{n // count} of the {n} training examples an epoch, in batches of "
              f"{input_context.get_per_replica_batch_size(cfg.train.batch_size)} per replica")
        counts.append(n)
        return ds.repeat()

    ds = strategy.distribute_datasets_from_function(share)  # calls `share` here, once a worker
    return ds, counts[0]


class LocalView:
    """`model`, or for a model trained under a tf.distribute strategy with several replicas, a
    single-device copy holding its current weights (called each time it is needed). Evaluation
    runs `predict`, which a distributed model answers once per replica (N images give
    N x replicas rows) and, across workers, only together with every worker."""

    def __init__(self, model, cfg):
        self.model, self.cfg, self._local = model, cfg, None

    def __call__(self):
        strategy = getattr(self.model, "_distribute_strategy", None)
        if strategy is None or strategy.num_replicas_in_sync == 1:
            return self.model
        if self._local is None:
            # Callbacks run outside the strategy's scope, so this model is a plain one.
            from mobilevision.tasks import TASKS

            self._local = TASKS[self.cfg.task].build(self.cfg)
        self._local.set_weights(self.model.get_weights())
        return self._local


class EvalCallback(keras.callbacks.Callback):
    """Evaluates the validation split every `train.eval_every` epochs (and after the last) with
    the task's own evaluation, through `predict` (segmentation: single scale, no flip, for
    speed), and puts `val_<metric>` into the epoch's logs before the checkpoint callback reads
    them."""

    def __init__(self, task, local: LocalView, cfg, names):
        super().__init__()
        self.task, self.local, self.cfg, self.names = task, local, cfg, names
        self.every = max(1, cfg.train.eval_every)
        self._api = None

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if logs is None or ((epoch + 1) % self.every and not last):
            return
        from mobilevision.model import Model

        model = self.local()
        if self._api is None or self._api.keras_model is not model:
            self._api = Model.from_keras(model, self.cfg, names=self.names)
        metrics = self._api.evaluate(self.cfg.data.val_split, **self.task.eval_options)
        for key in self.task.logged:
            logs[f"val_{key}"] = float(metrics[key])
        print(json.dumps({f"val_{k}": round(float(metrics[k]), 4) for k in self.task.logged}))


def evaluate_run(cfg, run: Path, model, names) -> dict:
    """Load the run's best (else last) checkpoint into `model` (a plain, single-device model of
    `cfg`) and evaluate it on the validation split: run/eval.json, the task's pictures, the
    per-class table. Returns the metrics."""
    from mobilevision.model import Model
    from mobilevision.backbones.weights import load_checkpoint

    weights = find_checkpoint(run)
    if weights is not None:
        load_checkpoint(model, weights)
    elif not cfg.model.weights:
        print("warning: evaluating an untrained model (no checkpoint and no model.weights)",
              file=sys.stderr)
    api = Model.from_keras(model, cfg, names=names, run=run, weights=weights)
    if weights is None:
        api.path = cfg.model.weights
    metrics, _ = api.evaluate_with_pictures(output=run, step=_epoch_of(weights))
    return metrics


def _epoch_of(weights) -> int:
    """The epoch a run checkpoint was written after (0 for any other file, or none)."""
    try:
        return checkpoint_state(weights)["epoch"] if weights else 0
    except TrainingError:
        return 0

