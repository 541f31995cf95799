"""Class-per-folder image datasets (the ImageNet / Keras `image_dataset_from_directory` layout).

    root/<split>/<class name>/<image>.jpg|.png
"""

from __future__ import annotations

import os
from pathlib import Path

from mobilevision.data.decode import is_image_file


class DatasetError(ValueError):
    """A dataset on disk is not in the expected layout; the message names the path."""


def list_image_folder(folder: str | os.PathLike, class_names: list[str] | None = None):
    """List images under `folder/<class>/`.

    Args:
      folder: the split folder.
      class_names: the class order to use (e.g. the training split's); default: sorted subfolders.
    Returns:
      (paths: list[str], labels: list[int], class_names: list[str]), files sorted for repeatability.
    Raises:
      DatasetError naming the folder if it is missing, has no class subfolders, or no images; if
      it has a class folder that `class_names` does not list; or, when the folders define the
      classes (`class_names` None, the training split), if a class folder holds no image.
      Files with other extensions are not listed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found (expected {folder}/<class>/<image>)")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DatasetError(f"{folder}: no class subfolders (expected {folder}/<class>/<image>)")
    defines_classes = class_names is None
    if defines_classes:
        class_names = found
    else:
        extra = [c for c in found if c not in class_names]
        if extra:
            raise DatasetError(f"{folder}: class folders {extra} are not among the training classes")
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for name in found:
        for root, _, files in os.walk(folder / name):
            for f in sorted(files):
                if is_image_file(f):
                    paths.append(os.path.join(root, f))
                    labels.append(index[name])
    if not paths:
        raise DatasetError(f"{folder}: no images (.jpg, .jpeg, .png, .bmp) in its class folders")
    if defines_classes:
        # A class without examples would still get an output and never be learned (torchvision's
        # ImageFolder refuses it too).
        used = set(labels)
        empty = [name for name in found if index[name] not in used]
        if empty:
            raise DatasetError(f"{folder / empty[0]}: class folder has no images (.jpg, .jpeg, "
                               f".png, .bmp); add some or remove it"
                               + (f" (also empty: {empty[1:]})" if len(empty) > 1 else ""))
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    return [paths[i] for i in order], [labels[i] for i in order], list(class_names)
