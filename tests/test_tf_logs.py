"""Tests for mobilevision.tf_logs: TensorFlow's benign start-up lines hidden, real errors kept."""

import os
import platform
import subprocess
import sys

import pytest

from mobilevision import tf_logs

NOTICE = "oneDNN supports DT_UINT8 only on platforms with AVX-512"  # tf_logs.spend_uint8_notice

# Lines as TensorFlow 2.21 writes them on a machine without a GPU.
CUINIT = (b"E0000 00:00:1796194461.123888    4794 cuda_platform.cc:52] failed call to cuInit: "
          b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
STARTUP = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
           b"I0000 00:00:1796194454.121138    4794 cpu_feature_guard.cc:227] This TensorFlow binary "
           b"is optimized to use available CPU instructions in performance-critical operations.\n"
           b"To enable the following instructions: AVX2 FMA, in other operations, rebuild "
           b"TensorFlow with the appropriate compiler flags.\n"
           b"2024-01-31 12:00:00.000000: I tensorflow/core/util/port.cc:113] oneDNN custom "
           b"operations are on. You may see slightly different numerical results.\n")


def test_filter_drops_startup_lines_and_passes_everything_else(capfd):
    with tf_logs.filtered_stderr(tf_logs.BENIGN + tf_logs.NO_GPU):
        os.write(2, STARTUP)
        os.write(2, b"E0000 real error\n")
        os.write(2, CUINIT)
        os.write(2, b"F0000 00:00:1.0 1 cpu_feature_guard.cc:1] fatal\nno newline at the end")
    os.write(2, b"\nafter the block\n")
    assert capfd.readouterr().err == ("E0000 real error\nF0000 00:00:1.0 1 "
                                      "cpu_feature_guard.cc:1] fatal\nno newline at the end\n"
                                      "after the block\n")


def _run(code, **env):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# Writes a real error and a benign line from inside the filtered window (while TensorFlow's own
# __init__ runs), and the benign line again after it.
IMPORT_THROUGH_MOBILEVISION = """
import os, sys
import mobilevision

BENIGN = b"W0000 00:00:1796194454.1 4794 trt.cc:1] TF-TRT Warning: Could not find TensorRT\\n"

class WriteInsideTheImport:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow.python":
            os.write(2, b"E0000 real error\\n" + BENIGN)
            print("a Python warning", file=sys.stderr)
        return None

sys.meta_path.insert(0, WriteInsideTheImport())  # asked first, finds nothing
import keras  # imports TensorFlow
import tensorflow as tf
assert not any(isinstance(f, mobilevision.tf_logs._QuietImport) for f in sys.meta_path)
assert type(tf.__loader__).__name__ != "_QuietLoader"
tf.config.list_physical_devices()
print("after the import", file=sys.stderr)
os.write(2, BENIGN)
# Logical devices can still be set up (as `distribute.cpu_devices` does), and a graph that
# transposes uint8 pixels (as the input pipeline's EXIF orientation does) then logs nothing.
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
flip = tf.function(lambda x: tf.transpose(x, [1, 0, 2]), autograph=False)
print(flip(tf.zeros([2, 3, 3], tf.uint8)).shape, len(tf.config.list_logical_devices("CPU")))
"""


def test_tensorflow_imported_through_mobilevision_is_quiet_but_keeps_real_errors():
    # TF_CPP_MIN_LOG_LEVEL=0, so that TensorFlow writes every start-up line it has.
    done = _run(IMPORT_THROUGH_MOBILEVISION)
    err = done.stderr
    assert done.stdout.split() == ["(3,", "2,", "3)", "2"], done.stdout
    assert err.index("E0000 real error\na Python warning\n") < err.index("after the import"), err
    assert err.count("TF-TRT") == 1 and err.endswith("after the import\n" + "W0000 00:00:"
                                                     "1796194454.1 4794 trt.cc:1] TF-TRT Warning: "
                                                     "Could not find TensorRT\n"), err
    for line in ("oneDNN custom operations", "This TensorFlow binary is optimized",
                 "To enable the following instructions", "absl::InitializeLog"):
        assert line not in err, err
    if not tf_logs._gpu_present():  # beside a GPU these lines pass, and the notice is not spent
        assert "cuInit" not in err and "Could not find cuda drivers" not in err, err
        assert NOTICE not in err, err


def test_opt_out_leaves_tensorflow_alone():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = ("import os, sys, mobilevision; print(any(type(f).__name__ == '_QuietImport' for f in "
            "sys.meta_path), os.environ.get('TF_CPP_MIN_LOG_LEVEL'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "MOBILEVISION_TF_LOGS": "1"}, timeout=120)
    assert done.stdout.split() == ["False", "None"], done.stdout + done.stderr


# The same graph without mobilevision.
UINT8_TRANSPOSE = """
import tensorflow as tf
flip = tf.function(lambda x: tf.transpose(x, [1, 0, 2]), autograph=False)
print(flip(tf.zeros([2, 3, 3], tf.uint8)).shape, flip(tf.zeros([4, 3, 3], tf.uint8)).shape)
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the notice comes from TensorFlow's oneDNN (x86) builds")
def test_upstream_still_logs_the_uint8_notice_once():
    # When TensorFlow stops writing it, tf_logs.spend_uint8_notice can go.
    done = _run(UINT8_TRANSPOSE)
    assert done.stderr.count(NOTICE) == 1, done.stderr
