"""Pieces the benchmark scripts share: argument checks, timing, repeats, the report and JSON.

Imported by the scripts next to it as `from common import ...` (a script's own folder is on
sys.path; the scripts also add it themselves, so importing them from elsewhere works). Nothing
here imports TensorFlow, Keras or mobilevision at module level: the scripts set TF's log level
before the first TensorFlow import.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


class BenchmarkError(RuntimeError):
    """A problem with the benchmark's setup that the user can fix (a peer Python that cannot run
    the peer script, ...): `run_benchmark` prints it as '<prog>: error: ...' and returns 2."""


# Arguments --------------------------------------------------------------------------------------


def apply_defaults(args, defaults: dict) -> None:
    """Set each attribute of `args` named in `defaults` that is still None to its default
    (the --quick or the full set)."""
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, default)


def check_counts(parser, args, positive) -> None:
    """Exit through `parser.error` unless every attribute named in `positive` is at least 1 and
    args.warmup is at least 0."""
    for key in positive:
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")


def check_sizes(parser, args, min_file_side: int) -> None:
    """Exit through `parser.error` unless args.size is a positive multiple of 32; turn
    args.file_size ("H", "HxW" or None for --size) into (H, W), each at least `min_file_side`."""
    if args.size < 32 or args.size % 32:
        parser.error(f"--size must be a positive multiple of 32 (the backbone's stride), got {args.size}")
    try:
        hw = [int(v) for v in (args.file_size or str(args.size)).lower().split("x")]
        if len(hw) not in (1, 2) or min(hw) < min_file_side:
            raise ValueError
    except ValueError:
        parser.error(f"--file-size expects H or HxW (at least {min_file_side} pixels), "
                     f"got {args.file_size!r}")
    args.file_size = (hw[0], hw[-1])


# Measurement ------------------------------------------------------------------------------------


def time_calls(fn, runs: int, warmup: int) -> dict:
    """Wall time of `fn()` (which must return only once its work is done): {"median_ms",
    "p90_ms", "runs_ms"} over `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    ordered = sorted(times)
    return {"median_ms": statistics.median(times),
            "p90_ms": ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)],
            "runs_ms": times}


def _step_timer(warmup: int):
    """A callback holding the wall time from the end of step `warmup` to the end of the last step.
    Keras turns the step's logs into Python numbers before callbacks run (none of ours is async),
    so a step has finished when its on_train_batch_end is called."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.start = self.end = None
            self.timed = 0

        def on_train_batch_begin(self, batch, logs=None):
            if warmup == 0 and batch == 0:
                self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if batch == warmup - 1:
                self.start = now
            elif batch >= warmup:
                self.end, self.timed = now, batch + 1 - warmup

    return StepTimer()


def time_fit(model, ds, batch_size: int, steps: int, warmup: int) -> float:
    """Images/s of `model.fit` over `steps` steps after `warmup` untimed ones."""
    timer = _step_timer(warmup)
    model.fit(ds, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0, shuffle=False)
    if timer.timed != steps or timer.end is None:
        raise RuntimeError(f"fit ran {timer.timed} of {steps} timed steps (did the dataset run out?)")
    return steps * batch_size / (timer.end - timer.start)


def time_pipeline(ds, batches: int, warmup: int, min_seconds: float = 2.0) -> tuple[float, int]:
    """Images/s of iterating the endless `ds` alone, after `warmup` batches, over at least
    `batches` batches and `min_seconds` seconds. Returns (images/s, batches timed)."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    images = done = 0
    while done < batches or time.perf_counter() - start < min_seconds:
        images += int(next(it)[0].shape[0])
        done += 1
    return images / (time.perf_counter() - start), done


def alternating_fit(models: dict, ds, batch_size: int, steps: int, warmup: int, repeats: int,
                    log, others: dict | None = None) -> tuple[dict, dict]:
    """Time the train step of each of `models` ({name: compiled model}) on `ds`, `repeats` rounds
    alternating the models in their order. A model's first run traces its train step during
    `warmup` untimed steps; later runs need one (new iterator, caches the other model evicted).
    others: {name: fn(steps, warmup) -> images/s}, train steps timed elsewhere (a PyTorch peer
    in a subprocess), run after the models in each round with the same steps and warmups, so
    drift of a busy machine hits every one of them alike.
    Returns ({name: [images/s per run]}, {name: median images/s}) over models and others."""
    others = others or {}
    runs = {name: [] for name in [*models, *others]}
    for i in range(repeats):
        run_warmup = warmup if i == 0 else min(warmup, 1)
        for name, model in models.items():
            log(f"[{i + 1}/{repeats}] train step, {name} ...")
            runs[name].append(time_fit(model, ds, batch_size, steps, run_warmup))
        for name, fn in others.items():
            log(f"[{i + 1}/{repeats}] train step, {name} ...")
            runs[name].append(fn(steps, run_warmup))
    return runs, {name: statistics.median(v) for name, v in runs.items()}


def pipeline_runs(ds, batches: int, warmup: int, repeats: int, log,
                  min_seconds: float = 2.0) -> tuple[list, list]:
    """`repeats` runs of `time_pipeline` on `ds`. Returns ([images/s per run],
    [batches timed per run])."""
    rates, timed_batches = [], []
    for i in range(repeats):
        log(f"[{i + 1}/{repeats}] input pipeline alone ...")
        rate, timed = time_pipeline(ds, batches, warmup, min_seconds=min_seconds)
        rates.append(rate)
        timed_batches.append(timed)
    return rates, timed_batches


def cpu_sample(pids=()) -> tuple | None:
    """(CPU time busy on all cores from /proc/stat, wall CPU time of all cores, CPU time of this
    process (with its children that have ended) and of `pids` from /proc/<pid>/stat, every
    thread included), all in clock ticks; None where /proc is unreadable. Two samples give
    `others_share`."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        total = sum(v[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
        busy = total - v[3] - v[4]
        own = 0
        for pid in ("self", *pids):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own += int(fields[11]) + int(fields[12])  # utime, stime
            if pid == "self":
                own += int(fields[13]) + int(fields[14])  # cutime, cstime: ended children
    except (OSError, ValueError, IndexError):
        return None
    return busy, total, own


def others_share(start, end) -> float | None:
    """The share of all cores that processes other than the sampled ones kept busy between two
    `cpu_sample`s (0 on an idle machine); None if either sample is missing."""
    if start is None or end is None:
        return None
    busy, total, own = (b - a for a, b in zip(start, end))
    return max(0.0, (busy - own) / max(total, 1))


# Report -----------------------------------------------------------------------------------------


def report_stream(json_out: str):
    """Where the table and progress go: stderr when the JSON goes to stdout ('-'), else stdout."""
    return sys.stderr if json_out == "-" else sys.stdout


def make_log(json_out: str):
    """A progress printer `log(message)` that prefixes the seconds since this call."""
    t0 = time.perf_counter()
    out = report_stream(json_out)

    def log(message):
        print(f"  [{time.perf_counter() - t0:5.0f} s] {message}", file=out, flush=True)

    return log


def fmt_runs(runs, fmt: str = ".1f") -> str:
    """Each run's figure in `fmt`, two spaces apart."""
    return "  ".join(f"{r:{fmt}}" for r in runs)


def table_width(rows) -> int:
    """The label column's width for `rows` of (label, value, value format, note)."""
    return max(len(label) for label, *_ in rows) + 2


def table_lines(rows, width: int) -> list[str]:
    """The 'images/s  runs' heading and one line per row of (label, value, value format, note);
    a value of None leaves the value column blank (a figure that was not measured)."""
    lines = [f"  {'':{width}s}{'images/s':>9s}   runs"]
    lines += [f"  {label:{width}s}{'-' if value is None else format(value, fmt):>9s}   {note}"
              for label, value, fmt, note in rows]
    return lines


def write_json(path: str, obj: dict) -> None:
    """`obj` as indented JSON to `path` (atomically), or to stdout when `path` is '-'."""
    text = json.dumps(obj, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    from mobilevision.utils import atomic_write_text

    atomic_write_text(path, text)


# Setup description ------------------------------------------------------------------------------


def utc_timestamp() -> str:
    """Now, UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def config_name(cfg, config: str) -> str:
    """The loaded config's file name, or the --config argument when it has no source file."""
    return Path(cfg["_source"]).name if cfg.get("_source") else config


def device_description(cpu_flags: bool = False) -> str:
    """'GPU: <names>' or 'CPU only (<cores> cores, <processor>)'; with `cpu_flags`, the CPU's
    avx2 / avx512f / avx512_bf16 / amx_bf16 flags from /proc/cpuinfo follow the processor."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        return f"GPU: {', '.join(names)}"
    if not cpu_flags:
        return f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    flags = cpu_info().get("flags", [])
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()}"
            f"{', ' + ' '.join(isa) if isa else ''})")


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
ONEDNN_ISA_ENV = "ONEDNN_MAX_CPU_ISA"  # read by TensorFlow's and PyTorch's oneDNN alike
_ONEDNN_ISA: dict = {}


def cpu_info() -> dict:
    """{"model", "vendor", "family", "cpu_model", "flags"} of the first CPU in /proc/cpuinfo
    ({} where it cannot be read); flags are only the vector ISA ones (ISA_FLAGS)."""
    info = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    keys = {"model name": "model", "vendor_id": "vendor", "cpu family": "family",
            "model": "cpu_model", "flags": "flags"}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block
        key, _, value = line.partition(":")
        key = key.strip()
        if key in keys:
            info[keys[key]] = value.strip()
    flags = set(info.get("flags", "").split())
    info["flags"] = [f for f in ISA_FLAGS if f in flags]
    return info


def onednn_isa() -> str | None:
    """The instruction set TensorFlow's oneDNN dispatches to in this environment (with
    ONEDNN_MAX_CPU_ISA as it is set here): oneDNN's own verbose line ('isa:Intel AVX2 ...') from
    one convolution in a short TensorFlow process. None where it does not say. Cached."""
    key = os.environ.get(ONEDNN_ISA_ENV, "")
    if key not in _ONEDNN_ISA:
        import subprocess

        code = ("import tensorflow as tf; "
                "tf.nn.conv2d(tf.ones([1, 8, 8, 8]), tf.ones([1, 1, 8, 8]), 1, 'SAME').numpy()")
        env = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        isa = None
        try:
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, timeout=120).stdout
            for line in out.splitlines():
                if ",isa:" in line:
                    isa = line.split(",isa:", 1)[1].strip()
                    break
        except (OSError, subprocess.SubprocessError):
            pass
        _ONEDNN_ISA[key] = isa
    return _ONEDNN_ISA[key]


def tf_onednn_ops() -> bool | None:
    """Whether TensorFlow runs its oneDNN ops (convolutions, BatchNorm, ...) in this process: by
    default only on CPUs with AVX-512 VNNI / BF16 or AMX, else TF_ENABLE_ONEDNN_OPTS decides; off,
    only its matrix products use oneDNN. None where TensorFlow is not imported here."""
    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def batch_norm_formulation() -> str | None:
    """How our BatchNorm trains in float32 here (mobilevision.workarounds: written, fused or
    keras); None where TensorFlow is not imported."""
    if "tensorflow" not in sys.modules:
        return None
    from mobilevision.workarounds import _train_formulation

    return _train_formulation()


def machine() -> dict:
    """What a figure was measured on: the CPU's model, family and vector ISA flags, the cores
    (all and the ones this process may use), the ISA TensorFlow's oneDNN dispatches to and the
    limit set on it (ONEDNN_MAX_CPU_ISA), and the load average."""
    cpu = cpu_info()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu.get("model") or platform.processor() or platform.machine(),
            "vendor": cpu.get("vendor"), "family": cpu.get("family"),
            "cpu_model": cpu.get("cpu_model"), "isa_flags": cpu.get("flags", []),
            "cores": os.cpu_count(), "usable_cores": usable,
            "onednn_isa": onednn_isa(), "onednn_max_cpu_isa": os.environ.get(ONEDNN_ISA_ENV),
            "tf_onednn_ops": tf_onednn_ops(), "batch_norm": batch_norm_formulation(),
            "tf_allocator_bfc": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def machine_line(m: dict, extra: str = "") -> str:
    """One line naming the machine of `machine()` (and `extra`, e.g. the peer's torch ISA)."""
    flags = " ".join(f.upper() for f in m.get("isa_flags", [])) or "no AVX2"
    if m.get("isa_flags") and "avx512f" not in m["isa_flags"]:
        flags += " (no AVX-512)"
    family = (f" (family {m['family']} model {m['cpu_model']})"
              if m.get("family") and m.get("cpu_model") else "")
    limit = f", held to {m['onednn_max_cpu_isa']}" if m.get("onednn_max_cpu_isa") else ""
    ops = m.get("tf_onednn_ops")
    if ops is not None:
        limit += (", its oneDNN ops on" if ops else
                  ", its oneDNN ops off (convolutions and BatchNorm in Eigen)")
    if m.get("batch_norm"):
        limit += f"; our BatchNorm trains {m['batch_norm']}"
    if m.get("tf_allocator_bfc") not in (None, "true", "1"):
        limit += f", TF_CPU_ALLOCATOR_USE_BFC={m['tf_allocator_bfc']}"
    return (f"machine: {m['cpu']}{family}, {m['usable_cores']} of {m['cores']} cores, {flags}; "
            f"TensorFlow oneDNN: {m.get('onednn_isa') or 'unknown'}{limit}{extra}; "
            f"load {m['loadavg'][0]:.2f}")


# Instruction-set modes a benchmark can run in, each in a fresh process (the libraries read
# these at start): "native" as the machine is; "avx2" as TensorFlow and PyTorch run with
# mobilevision on a CPU with AVX2 and no AVX-512: their oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA)
# and PyTorch's own kernels too (ATEN_CPU_CAPABILITY), TensorFlow's oneDNN ops on (as `import
# mobilevision` sets TF_ENABLE_ONEDNN_OPTS=1 on x86-64); "avx2-eigen" as TensorFlow alone runs
# there, its oneDNN ops off (TF_ENABLE_ONEDNN_OPTS=0, TensorFlow's default on CPUs without
# AVX-512 VNNI / BF16 or AMX): its convolutions and BatchNorm are then its own Eigen kernels,
# compiled for one ISA (not dispatched), and only its matrix products go through oneDNN.
ISA_ENV = {"native": {},
           "avx2": {ONEDNN_ISA_ENV: "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
           "avx2-eigen": {ONEDNN_ISA_ENV: "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                          "TF_ENABLE_ONEDNN_OPTS": "0"}}
ISA_CHILD = "_MOBILEVISION_BENCHMARK_ISA"  # set in a per-ISA child process


def parse_isa(parser, text: str) -> list[str]:
    isas = [v.strip() for v in text.split(",") if v.strip()]
    if not isas or any(v not in ISA_ENV for v in isas):
        parser.error(f"--isa: expected a comma-separated list of {', '.join(ISA_ENV)}, "
                     f"got {text!r}")
    return isas


def without_options(argv: list[str], options: tuple) -> list[str]:
    """argv without the given options and their values ('--isa avx2' and '--isa=avx2')."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not a.startswith(tuple(o + "=" for o in options)):
            out.append(a)
    return out


def in_isa_mode(isa: str) -> bool:
    """Whether this process already runs as `--isa` mode `isa`: started by `run_per_isa` for it,
    or its environment holds that mode's variables and none of the others' (TF_ENABLE_ONEDNN_OPTS
    may be 1 outside avx2-eigen: `import mobilevision` sets it so anyway). Otherwise the mode must
    run in a child: oneDNN and PyTorch read these variables once, at start-up."""
    if os.environ.get(ISA_CHILD):
        return os.environ[ISA_CHILD] == isa
    want = ISA_ENV[isa]
    for key in {k for mode in ISA_ENV.values() for k in mode}:
        have = os.environ.get(key)
        if key in want:
            if have != want[key]:
                return False
        elif have is not None and not (key == "TF_ENABLE_ONEDNN_OPTS" and have == "1"):
            return False
    return True


def run_per_isa(script: Path, argv: list[str], isas: list[str], log) -> dict:
    """Run `script argv` once per ISA mode of `isas`, each in a fresh process with ISA_ENV's
    variables (the others removed) and `--isa <mode> --json-out <temp>`; their tables go to
    this process's stdout. Returns {mode: the JSON it wrote}."""
    import subprocess
    import tempfile

    argv = without_options(argv, ("--isa", "--json-out"))
    results = {}
    for isa in isas:
        env = {k: v for k, v in os.environ.items()
               if k not in {key for mode in ISA_ENV.values() for key in mode}}
        env.update(ISA_ENV[isa], **{ISA_CHILD: isa})
        setting = " ".join(f"{k}={v}" for k, v in ISA_ENV[isa].items()) or "as the machine is"
        log(f"--isa {isa}: {setting}, in a fresh process ...")
        with tempfile.TemporaryDirectory(prefix="mv_isa_") as tmp:
            out = Path(tmp) / "result.json"
            done = subprocess.run([sys.executable, str(script), *argv, "--isa", isa,
                                   "--json-out", str(out)], env=env)
            if done.returncode or not out.exists():
                raise BenchmarkError(f"the --isa {isa} run of {script.name} failed "
                                     f"(exit {done.returncode})")
            results[isa] = json.loads(out.read_text())
    return results


def versions() -> dict:
    """{"tensorflow", "keras", "mobilevision", "python"} versions, in that order."""
    import keras
    import tensorflow as tf

    import mobilevision as mv

    return {"tensorflow": tf.__version__, "keras": keras.__version__,
            "mobilevision": mv.__version__, "python": platform.python_version()}


# Main -------------------------------------------------------------------------------------------


def run_benchmark(prog: str, args, run, format_table) -> int:
    """Run `run(args)` -> result dict, add its "seconds", print `format_table(result)` and write
    the JSON to args.json_out. A config error or a BenchmarkError prints '<prog>: error: ...'
    and returns 2."""
    from mobilevision.config import ConfigError

    t0 = time.perf_counter()
    try:
        result = run(args)
    except (ConfigError, BenchmarkError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result.setdefault("machine", machine())
    table = "  " + machine_line(result["machine"], result.get("machine_extra", "")) + "\n" + \
        format_table(result)
    print(table, file=report_stream(args.json_out), flush=True)
    write_json(args.json_out, result)
    if args.json_out != "-":
        print(f"  wrote {args.json_out} ({result['seconds']:.0f} s)")
    return 0
