"""`model.backbone.weights: imagenet`: the ImageNet weights keras.applications publishes, fetched
once into Keras' cache and checked.

    fetched = fetch_imagenet_weights("mobilenet_v2", alpha=0.35, input_size=(96, 96))
    fetched.path
    # ~/.keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5

File names and URLs are Keras' own (the backbone module's `imagenet_file`, registered in
`BACKBONES`), and so is the cache (`$KERAS_HOME/models`, default `~/.keras/models`): the copy
keras.applications downloads is the one used here, and the other way round.

- A cached file is used as it is, without contacting anything (offline use).
- A missing one is downloaded with `keras.utils.get_file` under a temporary name in the cache
  folder, checked (a readable HDF5 holding every weighted layer of the whole backbone at that
  width with the right shapes, and no other layer), then renamed into place. A failed, partial
  or wrong download is a one-line `WeightsFileError` saying where to put the file by hand, and
  leaves nothing in the cache. (A process killed mid-download can leave a hidden `.part` file,
  which is never read.)
- Keras publishes no hashes for these files; the SHA-256 of the file used is recorded instead
  (`LoadReport.sha256`, a run's `weights.json`).

The environment variable MOBILEVISION_WEIGHTS_URL replaces the folder URL Keras downloads from (a
mirror, or the tests' server on 127.0.0.1). Nothing else in mobilevision downloads.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from typing import NamedTuple

import keras

from mobilevision.backbones import BACKBONES
from mobilevision.backbones.weights import (
    IMAGENET,
    LoadReport,
    WeightsFileError,
    WeightsMismatchError,
    load_weights_by_name,
)

ENV_URL = "MOBILEVISION_WEIGHTS_URL"
CACHE_SUBDIR = "models"  # keras.applications' cache_subdir


class ImagenetWeights(NamedTuple):
    """A checked ImageNet weights file in Keras' cache."""

    path: str
    url: str            # where it was (or would be) downloaded from
    sha256: str
    downloaded: bool    # False: it was in the cache already
    note: str | None    # which file stands in for an input size without one of its own


def imagenet_file(backbone: str, alpha: float, input_size) -> tuple[str, str | None]:
    """(file name, note) of the published ImageNet weights for this backbone, width and input size.

    Raises:
      ValueError: the backbone or width has no published weights; the message names those that do.
    """
    spec = BACKBONES.get(backbone)
    if spec is None or spec.imagenet is None:
        having = ", ".join(name for name, b in BACKBONES.items() if b.imagenet is not None)
        raise ValueError(f"backbone {backbone!r} has no published ImageNet weights (backbones "
                         f"that have: {having})")
    return spec.imagenet(alpha, input_size)


def imagenet_url(backbone: str, file_name: str) -> str:
    """The URL of `file_name`: Keras' folder for the backbone, or $MOBILEVISION_WEIGHTS_URL."""
    base = os.environ.get(ENV_URL) or BACKBONES[backbone].imagenet_url
    return base.rstrip("/") + "/" + file_name


def cache_folder() -> str:
    """Keras' cache folder for model weights: $KERAS_HOME/models, default ~/.keras/models.

    Keras reads KERAS_HOME once, at import; it is read again here so that a process may set it
    later (the tests do). Created if need be; where the base folder is not writable, /tmp/.keras
    stands in, as in `keras.utils.get_file`.
    """
    from keras.src.backend.config import keras_home

    base = os.path.expanduser(os.environ.get("KERAS_HOME") or keras_home())
    try:
        # Before get_file looks: it takes a folder that does not exist yet for unwritable.
        os.makedirs(os.path.join(base, CACHE_SUBDIR), exist_ok=True)
    except OSError:
        pass
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, CACHE_SUBDIR)


def fetch_imagenet_weights(backbone: str = "mobilenet_v2", alpha: float = 1.0,
                           input_size=(224, 224)) -> ImagenetWeights:
    """The checked ImageNet weights file for this backbone, width and input size, downloaded into
    Keras' cache if it is not there yet (see the module docstring).

    Args:
      backbone: a name in `BACKBONES` with published weights.
      alpha: width multiplier.
      input_size: (height, width) of the model's input; a size without a file of its own takes
        the 224 file, and a note saying so is printed (stderr) and returned.

    Returns:
      `ImagenetWeights(path, url, sha256, downloaded, note)`.

    Raises:
      ValueError: no published weights for this backbone or width.
      WeightsFileError: the download failed or the file failed the check (one line, naming the
        URL and where to put the file by hand); nothing is left in the cache.
    """
    name, note = imagenet_file(backbone, alpha, input_size)
    url = imagenet_url(backbone, name)
    if note:
        print(f"note: {note}", file=sys.stderr)
    folder = cache_folder()
    final = os.path.join(folder, name)
    if os.path.isfile(final):
        return ImagenetWeights(final, url, _sha256(final), False, note)

    by_hand = (f"download {url} by hand and put it at {final} (or set {ENV_URL} to a folder "
               f"URL that serves it)")
    stage = f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part"
    try:
        # Keras' own downloader; on an error it deletes what it wrote (a short read included:
        # urllib raises ContentTooShortError when fewer bytes than announced arrive).
        part = keras.utils.get_file(fname=stage, origin=url, cache_subdir=CACHE_SUBDIR,
                                    cache_dir=os.path.dirname(folder))
    except Exception as e:  # get_file raises a bare Exception for HTTP and URL errors
        raise WeightsFileError(f"could not download ImageNet weights: {_one_line(e)}; "
                               f"{by_hand}") from None
    try:
        problem = _check(part, backbone, alpha)
        if problem:
            raise WeightsFileError(f"the file downloaded from {url} is not {backbone} alpha "
                                   f"{float(alpha):g}'s ImageNet weights ({problem}); nothing was "
                                   f"kept; {by_hand}")
        final = os.path.join(os.path.dirname(part), name)
        digest = _sha256(part)
        os.replace(part, final)  # atomic: the cache holds the whole checked file or nothing
    finally:
        if os.path.exists(part):
            os.remove(part)
    return ImagenetWeights(final, url, digest, True, note)


def _check(path: str, backbone: str, alpha: float) -> str | None:
    """None when `path` is a readable HDF5 weights file holding every weighted layer of the whole
    backbone at this width with the right shapes and no other layer (a no-top file); else what
    is wrong, in a few words."""
    spec = BACKBONES[backbone]
    # The whole backbone: built up to its last tap (for MobileNetV2 `out_relu`, the end of the
    # no-top network), at the smallest input; conv weights do not depend on the input size.
    full = spec.build(input_shape=(32, 32, 3), alpha=alpha, taps=(spec.taps[-1],))
    try:
        load_weights_by_name(full, path, allow_unused=False)
    except WeightsMismatchError as e:
        report = e.report
        what = []
        if report.mismatched:
            m = report.mismatched[0]
            what.append(f"{len(report.mismatched)} layer(s) of other shapes, e.g. {m.name} "
                        f"{m.found} instead of {m.expected}")
        if report.missing:
            what.append(f"{len(report.missing)} layer(s) missing, e.g. {report.missing[0]}")
        if report.unused:
            what.append(f"{len(report.unused)} layer(s) of another model, e.g. {report.unused[0]}")
        return "; ".join(what)
    except (WeightsFileError, OSError) as e:
        return _one_line(e).replace(path, "the file")
    return None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def load_backbone_weights(model, weights, *, backbone: str = "mobilenet_v2", alpha: float = 1.0,
                          input_size=None) -> LoadReport:
    """Load `model.backbone.weights` into the backbone `model`, by layer name.

    Args:
      model: the backbone (`BACKBONES[backbone].build(...)`), possibly truncated after its taps.
      weights: "imagenet" (keras.applications' published file for `alpha` and `input_size`,
        downloaded once into Keras' cache and checked, `mobilevision.backbones.imagenet`) or the
        path of a weights file; a file with layers the backbone lacks (a classifier top, the
        layers after a truncated backbone's last tap) is fine.
      backbone: the backbone's name in `BACKBONES`.
      alpha: its width multiplier.
      input_size: (height, width); default the model's input size.

    Returns:
      A `LoadReport`; for ImageNet weights with `source` (the URL), `sha256` and `note` (which
      file stood in for an input size Keras publishes none for).

    Raises:
      FileNotFoundError, WeightsFileError, WeightsMismatchError: a named file that is missing,
        unreadable or does not fit. WeightsFileError: ImageNet weights that cannot be downloaded
        or fail the check (one line saying where to put the file by hand). ValueError: no
        published ImageNet weights for this backbone or width.
    """
    if weights != IMAGENET:
        return load_weights_by_name(model, weights, allow_unused=True)
    size = input_size if input_size is not None else tuple(model.input_shape[1:3])
    fetched = fetch_imagenet_weights(backbone, alpha, size)
    try:
        report = load_weights_by_name(model, fetched.path, allow_unused=True)
    except (WeightsFileError, WeightsMismatchError) as e:
        detail = " ".join(str(e).split())[:300]
        if fetched.downloaded:  # checked whole a moment ago: the model is not of that width
            raise WeightsMismatchError(
                f"backbone '{model.name}' is not {backbone} alpha {alpha:g}, whose ImageNet "
                f"weights {fetched.path} were asked for: {detail}") from None
        # A download is checked whole before it is kept, so this file was put there by hand
        # (or by another program): not ours to delete.
        raise WeightsFileError(
            f"cached ImageNet weights {fetched.path} do not fit backbone '{model.name}' "
            f"({detail}); delete the file to download it again from {fetched.url}, or put the "
            f"right file there by hand") from None
    report.source, report.sha256, report.note = fetched.url, fetched.sha256, fetched.note
    return report
