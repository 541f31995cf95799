"""Small helpers shared across the package: atomic file writes and seeding."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sync: bool = True) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half of it:
    write a temporary file in the same folder, fsync it, then rename over the target.
    sync=False leaves out the fsync, for many small files made durable together by one
    `os.sync()` before whatever records them is written (an fsync costs about 0.5 ms on ext4,
    more than writing a small file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import, before any worker threads exist


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and Keras (which seeds TensorFlow) for repeatable runs."""
    import numpy as np
    import keras

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
