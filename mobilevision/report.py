"""What the console and the run folder say in words: the data report before training
(`data.json`) and the per-class table after evaluation.

    report = write_data_report(source, ["train", "val"], run)   # prints the block, writes data.json
    print(per_class_table(results))                            # AP / IoU / accuracy per class
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from mobilevision.utils import atomic_write_json

_SHOWN = 5  # skipped entries listed on the console per split; data.json holds them all


def _per_class(summary: dict):
    """(unit, {class: count} or None) of a split summary: its `<unit>_per_class` entry."""
    for key, value in summary.items():
        if key.endswith("_per_class"):
            return key[: -len("_per_class")], value
    return None, None


def data_report(source, splits) -> dict:
    """{"splits": {split: source.summary(split)}, "warnings": [...]}: the first split is the
    training split, whose classes without any example are warnings (each named), as are classes
    with no example in the other splits (they are not evaluated)."""
    splits = list(dict.fromkeys(splits))
    summaries = {split: source.summary(split) for split in splits}
    warnings = []
    for i, split in enumerate(splits):
        unit, counts = _per_class(summaries[split])
        for name, n in (counts or {}).items():
            if n == 0 and i == 0:
                warnings.append(f"class '{name}' has no training examples (0 {unit} in split "
                                f"'{split}'); the model cannot learn it")
            elif n == 0:
                warnings.append(f"class '{name}' has no examples in split '{split}' (0 {unit}); "
                                f"it is not evaluated there")
    return {"splits": summaries, "warnings": warnings}


def format_data_report(report: dict, path=None) -> str:
    """The console block of a `data_report` (`path`: where data.json was written)."""
    lines = ["data" + (f" ({path})" if path else "") + ":"]
    for split, s in report["splits"].items():
        head = [f"{s['images']} images"]
        if "objects" in s:
            head.append(f"{s['objects']} objects")
        if s.get("crowd_regions"):
            head.append(f"{s['crowd_regions']} crowd regions")
        if "images_without_objects" in s:
            head.append(f"{s['images_without_objects']} images without objects")
        if s.get("ignored_pixels"):
            head.append(f"{s['ignored_pixels']} ignored pixels (255)")
        lines.append(f"  {split}: " + ", ".join(head))
        unit, counts = _per_class(s)
        if unit is not None:
            # Each "name count" kept on one line: wrapped with non-breaking spaces inside.
            text = ("not counted (it would read the whole dataset)" if counts is None else
                    ", ".join(f"{name}\xa0{n}" for name, n in counts.items()))
            lines += [line.replace("\xa0", " ") for line in textwrap.wrap(
                f"{unit} per class: {text}", 96, initial_indent="    ",
                subsequent_indent="      ")]
        dropped = s.get("dropped_boxes") or {}
        if dropped or s.get("clipped_boxes"):
            reasons = ", ".join(f"{why} {n}" for why, n in dropped.items())
            lines.append(f"    dropped boxes: {sum(dropped.values())}"
                         + (f" ({reasons})" if reasons else "")
                         + f"; clipped to the image and kept: {s.get('clipped_boxes', 0)}")
        for key in ("skipped_annotations", "skipped_examples", "skipped_files"):
            entries = s.get(key) or {}
            if entries:
                lines.append(f"    {key.replace('_', ' ')}: {len(entries)}")
                lines += [f"      {what}: {why}" for what, why in list(entries.items())[:_SHOWN]]
                if len(entries) > _SHOWN:
                    lines.append(f"      ... and {len(entries) - _SHOWN} more "
                                 f"(data.json lists all)")
    return "\n".join(lines)


def write_data_report(source, splits, run) -> dict:
    """Write `run`/data.json (atomically), print the block and each warning (stderr)."""
    report = data_report(source, splits)
    path = Path(run) / "data.json"
    atomic_write_json(path, report)
    print(format_data_report(report, path))
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return report


def per_class_table(results: dict) -> str | None:
    """The `per_class_*` entries of evaluation results ({class: value}; None or -1 = not
    applicable, shown as n/a) as a table, a column each, with the mean of the applicable values
    last; None when there are none."""
    columns = {k[len("per_class_"):]: v for k, v in results.items()
               if k.startswith("per_class_") and isinstance(v, dict)}
    if not columns:
        return None
    names = list(dict.fromkeys(n for values in columns.values() for n in values))
    width = max(len(n) for n in [*names, "class"])

    def cell(v):
        return f"{'n/a':>9}" if v is None or v < 0 else f"{v:9.4f}"

    lines = [f"{'class':<{width}}" + "".join(f"{c:>9}" for c in columns)]
    for name in names:
        lines.append(f"{name:<{width}}" + "".join(cell(v.get(name)) for v in columns.values()))
    means = []
    for values in columns.values():
        applicable = [v for v in values.values() if v is not None and v >= 0]
        means.append(sum(applicable) / len(applicable) if applicable else None)
    lines.append(f"{'mean':<{width}}" + "".join(cell(m) for m in means))
    return "\n".join(lines)
