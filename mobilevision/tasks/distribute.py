"""tf.distribute for the trainer: the strategy named in the config, who the chief is, and the
loss normalizers that must count the global batch, not one replica's share.

    distribute.strategy  default       one device (tf.distribute's default strategy)
                         mirrored      the devices of this machine (every GPU; without GPUs,
                                       every CPU device: see distribute.cpu_devices)
                         multi_worker  MultiWorkerMirroredStrategy over the cluster in TF_CONFIG
                         tpu           TPUStrategy on distribute.tpu

`train.batch_size` is the global batch: tf.distribute splits each batch across the replicas, and
the loss functions below normalize by the global batch's counts, so the gradient of a step is the
one a single device computes on the whole batch. With `distribute.sync_batchnorm` BatchNorm
statistics are the global batch's too; then a run's losses do not depend on the replica count.
"""

from __future__ import annotations

import json
import os

import keras

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class DistributeError(RuntimeError):
    """The strategy of the config cannot be set up here; the message says why."""


def peer_failures() -> tuple:
    """The TensorFlow errors a collective raises when another worker died or is unreachable."""
    import tensorflow as tf

    return (tf.errors.UnavailableError, tf.errors.CancelledError,
            tf.errors.DeadlineExceededError, tf.errors.AbortedError)


# Loss normalizers ----------------------------------------------------------------------------

def _replica_context():
    """The tf.distribute replica context when one with several replicas is active, else None
    (other backends, the default strategy, or a cross-replica context)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def replica_sum(x):
    """`x` summed over the replicas of a multi-replica step (all-reduce); `x` itself with one
    replica and on backends other than TensorFlow.

    A loss that divides by a count (positive anchors, labelled pixels) must divide by the
    global batch's count for its gradient to equal the single-device one."""
    ctx = _replica_context()
    if ctx is None:
        return x
    import tensorflow as tf

    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def num_replicas() -> int:
    """Replicas in the current step (1 outside a multi-replica one). Keras divides each
    replica's mean-reduced loss by this, so a replica whose loss is such a mean divides by its
    share of a global count: replica_sum(count) / num_replicas()."""
    ctx = _replica_context()
    return 1 if ctx is None else int(ctx.num_replicas_in_sync)


# Strategies ----------------------------------------------------------------------------------

def split_cpu(n: int) -> None:
    """Make the host CPU appear as `n` logical devices (before TensorFlow has started)."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:
        raise DistributeError(
            f"distribute.cpu_devices={n}: TensorFlow has already started in this process, and "
            f"devices can only be split before it does; set it in the run's config or on the "
            f"command line (train.py ... distribute.cpu_devices={n})") from None


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise DistributeError(
            "distribute.strategy=multi_worker needs the cluster in the TF_CONFIG environment "
            "variable, e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", "
            "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' (docs/clusters.md: "
            "Running on a cluster)")
    try:
        spec = json.loads(raw)
        cluster, task = spec["cluster"], spec["task"]
        kind, index = task["type"], int(task["index"])
        members = cluster[kind]
    except (ValueError, KeyError, TypeError) as e:
        raise DistributeError(f"TF_CONFIG is not a cluster spec ({type(e).__name__}: {e}); "
                              f"expected {{\"cluster\": {{\"worker\": [...]}}, \"task\": "
                              f"{{\"type\": \"worker\", \"index\": N}}}}") from None
    if not 0 <= index < len(members):
        raise DistributeError(f"TF_CONFIG: task {kind} index {index} is not in the cluster's "
                              f"{len(members)} {kind}(s)")
    return spec


def make_strategy(cfg):
    """The tf.distribute strategy of `cfg.distribute`. Call it before any other TensorFlow
    work in the process: splitting the CPU and the multi-worker collectives must be set up
    before TensorFlow starts its runtime."""
    d = cfg.distribute
    if d.cpu_devices > 1:
        split_cpu(d.cpu_devices)
    import tensorflow as tf

    if d.strategy == "default":
        return tf.distribute.get_strategy()
    if d.strategy == "mirrored":
        devices = d.devices
        if not devices and not tf.config.list_logical_devices("GPU"):
            devices = [dev.name for dev in tf.config.list_logical_devices("CPU")]
        try:
            return tf.distribute.MirroredStrategy(devices or None)
        except (ValueError, RuntimeError) as e:
            raise DistributeError(f"distribute.devices={devices}: {e}") from None
    if d.strategy == "multi_worker":
        _tf_config()
        implementation = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
                          "ring": tf.distribute.experimental.CommunicationImplementation.RING,
                          "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL
                          }[d.communication]
        options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except (ValueError, RuntimeError) as e:
            raise DistributeError(f"multi_worker: {e}") from None
    if d.strategy == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=d.tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            where = repr(d.tpu) if d.tpu else "on this machine"
            raise DistributeError(f"distribute.strategy=tpu: no TPU found {where} "
                                  f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                                  ) from None
        return tf.distribute.TPUStrategy(resolver)
    raise DistributeError(f"distribute.strategy must be one of {STRATEGIES}, got {d.strategy!r}")


def is_multi_worker(strategy) -> bool:
    return bool(getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)())


def shards_input(strategy) -> bool:
    """Whether each worker builds the training data for its own share of the examples
    (`distribute_datasets_from_function`, tf.distribute's InputContext) instead of one dataset
    that tf.distribute splits: under multi_worker and tpu, where every worker (host) has its own
    input pipeline and would otherwise read and decode the whole split to keep 1/N of it."""
    import tensorflow as tf

    return is_multi_worker(strategy) or isinstance(strategy, tf.distribute.TPUStrategy)


def worker_role(strategy) -> tuple[str, int, bool]:
    """(task type, index, is chief) of this process. The chief is the `chief` task, or worker 0
    of a cluster without one; a single process is its own chief."""
    if not is_multi_worker(strategy):
        return "worker", 0, True
    resolver = strategy.cluster_resolver
    kind, index = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return kind, index, kind == "chief" or (not has_chief and kind == "worker" and index == 0)


def _sum_over_replicas(strategy, values: list[float]) -> list[float]:
    """`values` summed over every replica of every worker (float64: exact for integers).
    A worker that stopped instead of joining is a DistributeError, not a traceback."""
    import tensorflow as tf

    try:
        per_replica = strategy.run(lambda: tf.constant(values, tf.float64))
        return [float(x) for x in strategy.reduce("SUM", per_replica, axis=None)]
    except peer_failures() as e:
        raise DistributeError(f"another worker stopped before training ({type(e).__name__}); "
                              f"see its error") from None


def all_ready(strategy, ready: bool) -> bool:
    """Whether every worker is `ready`; every worker gets the same answer, so when one (the
    chief, finding the run folder unusable) stops, the others stop with it instead of waiting
    in the next collective."""
    if not is_multi_worker(strategy):
        return ready
    n, ok = _sum_over_replicas(strategy, [1.0, 1.0 if ready else 0.0])
    return ok == n


def agree_on(strategy, value: int, what: str) -> None:
    """Stop on every worker unless all workers hold the same integer `value` (e.g. the epoch
    they resume from): workers that disagree would hang in the collectives, or train apart."""
    if not is_multi_worker(strategy):
        return
    v = float(value)
    n, total, squares = _sum_over_replicas(strategy, [1.0, v, v * v])
    if n * squares != total * total:  # Cauchy-Schwarz: equal only when all values are equal
        raise DistributeError(
            f"the workers do not agree on {what} (this worker: {value}, mean over workers: "
            f"{total / n:g}); --resume needs the run folder on storage that every worker reads")


def synchronize_batchnorm(model) -> int:
    """Make every BatchNormalization layer of `model` (nested models too) compute its batch
    statistics over all replicas. Returns the number of layers changed."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count
