"""Hide TensorFlow's benign C++ start-up lines, and nothing else.

`import tensorflow` and its first device query write lines like these, from C++ straight to file
descriptor 2 (Python's `sys.stderr` never sees them), on every machine without a GPU:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796194454.007557  4794 cudart_stub.cc:31] Could not find cuda drivers on your
        machine, GPU will not be used.
    E0000 00:00:1796194461.123888  4794 cuda_platform.cc:52] failed call to cuInit: INTERNAL:
        CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)

They are not errors but read like them. TF_CPP_MIN_LOG_LEVEL=3 would hide real errors with them,
and the lines written before absl's logging starts ignore it anyway. So, while TensorFlow is
imported and lists its devices (and only then), fd 2 goes through a pipe to a small filter process
that drops the lines matching BENIGN (and, where no GPU device exists, NO_GPU) and passes every
other byte through unchanged: fatal (`F`) lines, real errors, Python warnings.

One more comes later, once a process, from oneDNN builds (x86), on AVX-512 machines too, the
first time a graph that transposes uint8 data is optimized (the input pipeline's EXIF orientation
does):

    E0000 00:00:1796393241.322527    7645 util.cc:131] oneDNN supports DT_UINT8 only on
        platforms with AVX-512. Falling back to the default Eigen-based implementation if present.

It says only that such ops run in Eigen. On a machine without a GPU the import provokes it inside
the filter (`spend_uint8_notice`: a 1-pixel graph in a session of its own, 0.03 s; the eager
runtime stays uninitialised), so it is spent there; beside a GPU a session would claim its memory,
so there it is left alone.

The filter is a process, not a thread: TensorFlow's initialisers write while the importing thread
holds the GIL, so a thread could not drain a full pipe, and a process still delivers what was
written when TensorFlow aborts during import (an `F ... cpu_feature_guard.cc]` line).

LiteRT writes two more lines of that kind (LITERT): `INFO: Created TensorFlow Lite XNNPACK
delegate for CPU.`, once a process, when the first TFLite file gets its default CPU delegate
(`allocate_tensors`), which says XNNPACK runs the file, as intended; and `fully_quantize: 0,
inference_type: 6, input_inference_type: UINT8, output_inference_type: FLOAT32`, the converter's
settings, at every int8 conversion. `quiet_litert()` drops those two lines alone
(`export.runtime.TFLiteRunner` allocates its interpreter inside it, `export.tflite` converts
inside it); a conversion's errors pass.

`import mobilevision` calls `install()`, so the commands and the Python API both get it, without
importing TensorFlow themselves. MOBILEVISION_TF_LOGS=1 turns it off and shows everything.
"""

from __future__ import annotations

import contextlib
import os
import sys

# An absl log line's prefix (TF 2.16+: "I0000 00:00:1796194454.007557    4794 file.cc:31] ";
# earlier: "2024-01-31 12:00:00.000000: I tensorflow/core/util/port.cc:113] "). Only I, W and E
# lines can match: a fatal line always passes.
_LOG = r"^(?:[IWE]\d{4} [\d:.]+ +\d+|\d{4}-\d\d-\d\d [\d:.]+: [IWE]) \S+:\d+\] "

# Lines that say nothing is wrong, on any machine.
BENIGN = (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    _LOG + r"This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags",
    _LOG + r"oneDNN custom operations are on\.",
    _LOG + r"Unable to register cu(?:DNN|FFT|BLAS) factory: Attempting to register factory",
    _LOG + r"computation placer already registered",
    _LOG + r"TF-TRT Warning: Could not find TensorRT",
    _LOG + r"oneDNN supports DT_UINT8 only on platforms with AVX-512",
)
# Lines that mean "no GPU here": hidden only where the machine has none (no /dev/nvidia<N>, no
# WSL /dev/dxg); beside a GPU they say why it is not used, and pass.
NO_GPU = (
    _LOG + r"Could not find cuda drivers on your machine, GPU will not be used",
    _LOG + r"failed call to cuInit",
)

# LiteRT's line when it applies XNNPACK, its default CPU delegate (a plain "INFO: " prefix), and
# the TFLite converter's settings line at an int8 conversion (printf'd by its quantizer).
LITERT = (r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
          r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, "
          r"output_inference_type: \w+$")

OPT_OUT = "MOBILEVISION_TF_LOGS"  # "1": show TensorFlow's start-up lines, filter nothing

# The filter process: argv = patterns; stdin = the pipe; stderr = the real fd 2.
_FILTER = r"""
import re, sys
benign = re.compile(b"|".join(b"(?:%s)" % p.encode() for p in sys.argv[1:]))
out = sys.stderr.buffer
for line in iter(sys.stdin.buffer.readline, b""):
    if not benign.search(line):
        out.write(line)
        out.flush()
"""


def enabled() -> bool:
    return os.environ.get(OPT_OUT, "") in ("", "0")


def _gpu_present() -> bool:
    from pathlib import Path

    return Path("/dev/dxg").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def startup_patterns() -> tuple:
    """The patterns `filtered_stderr` drops on this machine: BENIGN, plus NO_GPU without a GPU."""
    return BENIGN + (() if _gpu_present() else NO_GPU)


@contextlib.contextmanager
def filtered_stderr(patterns=None):
    """Within the block, lines written to fd 2 (by C++, C or Python) that match one of `patterns`
    (regular expressions; default `startup_patterns()`) are dropped; everything else reaches
    the original stderr unchanged and in order, by the time the block ends. Does nothing where
    fd 2 cannot be redirected (not POSIX, fd 2 closed, no Python executable to run)."""
    patterns = startup_patterns() if patterns is None else tuple(patterns)
    if os.name != "posix" or not sys.executable or not patterns:
        yield
        return
    import subprocess

    _flush_stderr()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILTER, *patterns],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=saved)
        os.dup2(proc.stdin.fileno(), 2)
    except OSError:
        os.close(saved)
        yield
        return
    try:
        yield
    finally:
        _flush_stderr()
        os.dup2(saved, 2)
        os.close(saved)
        proc.stdin.close()  # the last write end (unless a child started in the block holds one)
        try:
            proc.wait(timeout=5)  # all it passes is written before anything after the block
        except subprocess.TimeoutExpired:
            pass  # it forwards for that child until the child closes its copy


@contextlib.contextmanager
def quiet_litert():
    """Within the block, LiteRT's two benign lines (LITERT) are dropped, unless
    MOBILEVISION_TF_LOGS=1; every other line passes."""
    if not enabled():
        yield
        return
    with filtered_stderr(LITERT):
        yield


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def install() -> None:
    """Set TF_CPP_MIN_LOG_LEVEL=2 unless the user chose one (TensorFlow's C++ INFO and WARNING
    lines off, errors on), and run the first `import tensorflow` of this process, and its device
    listing, inside `filtered_stderr`. Nothing if MOBILEVISION_TF_LOGS=1 or TensorFlow is already
    imported; never imports TensorFlow itself."""
    if not enabled():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietImport())


class _QuietImport:
    """A meta path finder for the top-level `tensorflow` package alone, used once: it finds the
    package with the other finders and wraps its loader's `exec_module` in `filtered_stderr`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or path is not None:
            return None
        import importlib.util

        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader:
    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # the real one, from now on
        with filtered_stderr():
            self.loader.exec_module(module)
            # The first device query initialises the CUDA platform (the cuInit line). It only
            # lists devices: the runtime stays uninitialised, so strategies and device settings
            # can still be chosen afterwards.
            with contextlib.suppress(Exception):  # a real problem shows again where it matters
                module.config.list_physical_devices()
            if not _gpu_present():  # beside a GPU a session would claim its memory
                with contextlib.suppress(Exception):
                    spend_uint8_notice(module)


def spend_uint8_notice(tf) -> None:
    """Optimize and run a graph that transposes a 1-pixel uint8 image, in a CPU-only v1 session
    of its own (the eager runtime stays uninitialised, so device settings can still be chosen):
    oneDNN builds log their DT_UINT8 notice (BENIGN's last line) the first time in a process,
    here inside the filter instead of in the middle of a user's run. Not run where a GPU is
    present (the import hook checks), so nothing touches a GPU before the user's settings."""
    import numpy as np

    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.uint8, [None, None, 3])
        flipped = tf.transpose(image, [1, 0, 2])
    config = tf.compat.v1.ConfigProto(device_count={"GPU": 0})  # the CPU kernels log it
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        session.run(flipped, {image: np.zeros((1, 1, 3), np.uint8)})
