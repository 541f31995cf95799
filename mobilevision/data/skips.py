"""A thread-safe record of inputs skipped by the pipeline (unreadable images, dropped boxes), so
every skip is reported with its path at the end of an epoch and in the run's results."""

from __future__ import annotations

import threading


class SkipLog:
    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[str, str] = {}
        self._reported = 0

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            self._items.setdefault(path, reason)

    def items(self) -> dict[str, str]:
        with self._lock:
            return dict(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def new_since_last_report(self) -> dict[str, str]:
        """Entries not reported before (a file is reported once, though it fails every epoch)."""
        with self._lock:
            items = list(self._items.items())
            new = dict(items[self._reported:])
            self._reported = len(items)
            return new


SKIPPED = SkipLog()


def report_skips() -> None:
    """Print, once each, the files skipped since the last report (stderr; 20 at most)."""
    import sys

    new = SKIPPED.new_since_last_report()
    if new:
        print(f"skipped {len(new)} unreadable file(s) (total {len(SKIPPED)}):", file=sys.stderr)
        for path, reason in list(new.items())[:20]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(new) > 20:
            print(f"  ... and {len(new) - 20} more", file=sys.stderr)
