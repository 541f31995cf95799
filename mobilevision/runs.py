"""A run folder's layout, shared by the trainer and the Python API (neither imports the other
for it):

    runs/<name>/config.yaml, labels.txt
    runs/<name>/checkpoints/last.weights.h5, best.weights.h5   (attributes: epoch, best, monitor)

and the metrics line the commands print last.
"""

from __future__ import annotations

import json
from pathlib import Path

LAST = "last.weights.h5"
BEST = "best.weights.h5"
TMP_SUFFIX = ".tmp.weights.h5"  # a checkpoint being written; a killed run may leave one


class TrainingError(RuntimeError):
    """Training cannot start or had to stop; the message says why and what was kept."""


def run_dir_for(cfg, output=None) -> Path:
    """The run folder of a config: `output`, else its `output` key, else runs/<name>."""
    return Path(output or cfg.get("output") or Path("runs") / cfg.name)


def find_checkpoint(run) -> Path | None:
    """The run's best checkpoint, else its last; None when it has neither."""
    return next((p for p in (Path(run) / "checkpoints" / n for n in (BEST, LAST)) if p.exists()),
                None)


def checkpoint_state(path) -> dict:
    """{'epoch': completed epochs, 'best': best monitored value or None, 'monitor': name}."""
    import h5py
    import numpy as np

    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            best = float(a["best"]) if "best" in a and not np.isnan(a["best"]) else None
            return {"epoch": int(a["epoch"]), "best": best, "monitor": str(a.get("monitor", ""))}
    except (OSError, KeyError) as e:
        raise TrainingError(f"{path}: not a readable mobilevision checkpoint ({e})") from None


def read_labels(path, num_classes: int) -> list[str]:
    """A labels.txt (one class name a line), checked against the class count."""
    from mobilevision.config import ConfigError

    names = [n for n in Path(path).read_text(encoding="utf-8").split("\n") if n]
    if len(names) != num_classes:
        raise ConfigError(f"{path}: {len(names)} class names, but model.num_classes is "
                          f"{num_classes}")
    return names


def dumps_metrics(results: dict) -> str:
    """One-line JSON of the numeric metrics (what `evaluate` prints last)."""
    return json.dumps({k: v for k, v in results.items() if isinstance(v, (int, float, str))})
