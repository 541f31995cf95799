"""Model statistics: parameters, multiply-adds, peak activation memory, per-layer table.

Independent of the task: works on any functional (or built Sequential) Keras model, descends
into nested functional models, and handles multi-input / multi-output (dict) models.

    stats = profile_model(model)
    print(format_profile(stats))
"""

from __future__ import annotations

import math


import keras

__all__ = ["profile_model", "format_profile"]

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_CONV_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8, "bool": 1,
                "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4,
                "int64": 8, "uint64": 8, "float8_e4m3fn": 1, "float8_e5m2": 1}


def _graph(op):
    """The keras Function holding the graph of a functional / built Sequential model, else None."""
    if isinstance(op, keras.Sequential):
        return getattr(op, "_functional", None)
    if isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth"):
        return op
    return None


def _spatial(shape, data_format):
    return shape[2:] if data_format == "channels_first" else shape[1:-1]


def _prod(dims, what):
    if any(d is None for d in dims):
        raise ValueError(
            f"Cannot count multiply-adds of {what}: unknown dimension in {tuple(dims)}. Build "
            f"the model with a fixed input size or pass input_shape= to profile_model."
        )
    return int(math.prod(dims))


def _atrous_grid(op, out_spatial):
    """Output positions a dilated conv computes as TensorFlow runs it.

    TensorFlow (outside TPUs) runs a conv or depthwise conv with dilation rate r > 1 and stride 1
    as space_to_batch -> dense conv -> batch_to_space: every spatial dim is padded up to a
    multiple of r, the conv runs on all of it and the extra rows and columns are cropped away. So
    it computes ceil(H / r) * r by ceil(W / r) * r outputs, not H by W; the MobileNetV2 paper's
    figures, from TensorFlow's profiler, count that grid (DeepLabv3's 6/12/18 rates on a 32 x 32
    map compute 36 x 36). A backend with native dilated convs (XLA, JAX) computes H x W only;
    `profile_model` reports the difference as `atrous_padding_madds`.
    """
    rates = tuple(getattr(op, "dilation_rate", None) or ())
    strides = tuple(getattr(op, "strides", None) or ())
    if len(rates) != len(out_spatial) or all(r == 1 for r in rates) or any(s != 1 for s in strides):
        return out_spatial
    return tuple(None if d is None else -(-d // r) * r for d, r in zip(out_spatial, rates))


def _madds(op, ins, outs) -> tuple[dict[str, int], int]:
    """Multiply-adds of one call of `op` for one example, by kind, and how many of them are the
    space-to-batch padding of a dilated conv (see `_atrous_grid`). Bias adds are not counted."""
    what = f"layer '{op.name}'"
    if isinstance(op, _CONV_TRANSPOSE):
        # Every input position scatters a k x k x C_out patch per input channel.
        n = _spatial(ins[0].shape, op.data_format)
        return {"conv": _prod(n, what) * _prod(op.kernel.shape, what)}, 0
    if isinstance(op, (_SEPARABLE, _DEPTHWISE, _CONV)):
        out = tuple(_spatial(outs[0].shape, op.data_format))
        n = _prod(out, what)
        grid = _prod(_atrous_grid(op, out), what)
        if isinstance(op, _SEPARABLE):
            # The depthwise part runs dilated; the pointwise part on the cropped output.
            return {"depthwise": grid * _prod(op.depthwise_kernel.shape, what),
                    "conv": n * _prod(op.pointwise_kernel.shape, what)}, \
                (grid - n) * _prod(op.depthwise_kernel.shape, what)
        # depthwise kernel: (k_h, k_w, C_in, depth_multiplier); conv kernel: (k_h, k_w,
        # C_in / groups, C_out); strides and dilation only change the output positions.
        kind = "depthwise" if isinstance(op, _DEPTHWISE) else "conv"
        per_position = _prod(op.kernel.shape, what)
        return {kind: grid * per_position}, (grid - n) * per_position
    if isinstance(op, keras.layers.Dense):
        n = _prod(outs[0].shape[1:-1], what)  # leading dims when applied to a >2-D tensor
        return {"dense": n * _prod(op.kernel.shape, what)}, 0
    return {}, 0


def _nbytes(t, batch_size):
    shape = tuple(t.shape)
    dims = shape[1:] if shape else ()
    batch = batch_size if shape else 1
    if any(d is None for d in dims):
        raise ValueError(
            f"Cannot size activation of shape {shape}: build the model with a fixed input size "
            f"or pass input_shape= to profile_model."
        )
    itemsize = _DTYPE_BYTES.get(keras.backend.standardize_dtype(t.dtype), 4)
    return batch * int(math.prod(dims)) * itemsize


def _fresh(t):
    return keras.KerasTensor(shape=t.shape, dtype=t.dtype)


class _Walker:
    """Runs a functional graph symbolically, flattening nested models, recording each call.

    Nodes are visited in the order `keras` itself executes them (`Function._run_through_graph`:
    by decreasing depth). A nested model's inputs and outputs are the caller's tensors, so they
    are not counted twice.
    """

    def __init__(self):
        self.events = []  # (op, scope, input tensors, output tensors)

    def run(self, fn, inputs, scope):
        tensors = {id(ref): x for ref, x in zip(fn.inputs, inputs)}
        for depth in sorted(fn._nodes_by_depth, reverse=True):
            for node in fn._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if any(id(x) not in tensors for x in node.input_tensors):
                    continue
                args, kwargs = node.arguments.fill_in(tensors)
                ins = [tensors[id(x)] for x in node.input_tensors]
                op = node.operation
                sub = _graph(op)
                if sub is not None and args:
                    flat = keras.tree.flatten(args[0])
                    if len(flat) == len(sub.inputs):
                        outs = self.run(sub, flat, scope + (op.name,))
                        for ref, x in zip(node.outputs, outs):
                            tensors[id(ref)] = x
                        continue
                if all(tuple(a.shape) == tuple(b.shape) for a, b in zip(ins, node.input_tensors)):
                    outs = [_fresh(t) for t in node.outputs]
                else:  # called on other shapes than it was built with: recompute
                    outs = [_fresh(t) for t in
                            keras.tree.flatten(op.compute_output_spec(*args, **kwargs))]
                self.events.append((op, scope, ins, outs))
                for ref, x in zip(node.outputs, outs):
                    tensors[id(ref)] = x
        return [tensors[id(x)] for x in fn.outputs]


def profile_model(model, batch_size: int = 1, input_shape=None) -> dict:
    """Parameters, multiply-adds and an activation-memory estimate of a functional model.

    Args:
      model: a functional `keras.Model` (or a built `keras.Sequential`); nested functional
        models are descended into, so their layers appear (and are counted) individually.
      batch_size: batch size assumed for `peak_activation_bytes` (MAdds are per example).
      input_shape: optional shape without batch (a list of shapes for several inputs) to profile
        at, e.g. when the model was built with `(None, None, 3)`.

    Returns:
      A dict:
      - `params`: `model.count_params()`; `trainable_params`.
      - `madds`: multiply-adds for one example. Conv (also strided / dilated / grouped):
        H_out * W_out * k_h * k_w * C_in/groups * C_out; depthwise: H_out * W_out * k_h * k_w *
        C_in * depth_multiplier; a dilated stride-1 conv or depthwise conv over its
        space-to-batch grid, as TensorFlow runs it (H_out, W_out rounded up to multiples of the
        rate; see `_atrous_grid`); separable: both parts; transposed conv: H_in * W_in * k_h *
        k_w * C_in * C_out; Dense: in * out times the leading (non-batch) dims of its input.
        Nothing else is counted (no bias, BatchNorm, activation, pooling, add).
      - `madds_by_type`: {"conv", "depthwise", "dense"} split of `madds` (the separable
        pointwise part and transposed convs count as "conv").
      - `atrous_padding_madds`: the part of `madds` that dilated convs spend on the rows and
        columns TensorFlow's space-to-batch adds and crops away; a backend with native dilated
        convs does `madds - atrous_padding_madds`.
      - `peak_activation_bytes`: the largest total size of the tensors that must be alive at
        once when the flattened graph runs op by op in Keras' execution order. Counted: the
        model inputs and every op's outputs, each as batch_size * prod(shape[1:]) * dtype size
        (float32 = 4 bytes), alive from when it is produced (inputs: from the start) until its
        last consumer has run (model outputs: until the end); while an op runs, its inputs and
        outputs are alive together. Not counted: weights, framework workspace, gradients;
        every op (also reshape / padding / dropout) is assumed to write a new buffer, and no
        op is computed in slices. `peak_activation_layer` names the op at which the peak occurs.
      - `layers`: one row per op call in execution order: {"name", "class", "scope" (names of
        the enclosing nested models, "/"-joined), "output_shape" (a tuple, or a list of
        tuples for several outputs; batch dim None), "params" (counted at a layer's first
        call only), "madds"}.
      - `batch_size`, `input_shapes`, `output_shapes`.
      - `notes`: ops whose insides could not be counted (subclassed models, composite layers).
    """
    fn = _graph(model)
    if fn is None:
        raise ValueError(
            f"profile_model needs a functional or built Sequential model; got "
            f"{type(model).__name__} '{getattr(model, 'name', model)}'"
        )
    if input_shape is None:
        inputs = [_fresh(x) for x in fn.inputs]
    else:
        shapes = [input_shape] if len(fn.inputs) == 1 else list(input_shape)
        if len(shapes) != len(fn.inputs):
            raise ValueError(f"input_shape gives {len(shapes)} shapes for {len(fn.inputs)} inputs")
        inputs = [keras.KerasTensor(shape=(None, *s), dtype=x.dtype)
                  for s, x in zip(shapes, fn.inputs)]

    walker = _Walker()
    outputs = walker.run(fn, inputs, ())

    madds_by_type = {"conv": 0, "depthwise": 0, "dense": 0}
    atrous_padding = 0
    rows, seen, notes = [], set(), []
    for op, scope, ins, outs in walker.events:
        kinds, padding = _madds(op, ins, outs)
        atrous_padding += padding
        if not kinds and (isinstance(op, keras.Model) or getattr(op, "_layers", None)):
            notes.append(f"{'/'.join((*scope, op.name))} ({type(op).__name__}) is not a "
                         f"functional model: the MAdds of its sublayers are not counted")
        for kind, n in kinds.items():
            madds_by_type[kind] += n
        params = 0
        if id(op) not in seen:
            seen.add(id(op))
            params = int(sum(math.prod(w.shape) for w in getattr(op, "weights", [])))
        shapes = [tuple(t.shape) for t in outs]
        rows.append({
            "name": op.name,
            "class": type(op).__name__,
            "scope": "/".join(scope),
            "output_shape": shapes[0] if len(shapes) == 1 else shapes,
            "params": params,
            "madds": sum(kinds.values()),
        })

    # Liveness sweep for the activation peak.
    last_use = {}
    for i, (_, _, ins, _) in enumerate(walker.events):
        for t in ins:
            last_use[id(t)] = i
    end = len(walker.events)
    for t in outputs:
        last_use[id(t)] = end
    sizes = {}
    live = {}
    for t in inputs:
        if id(t) in last_use:
            live[id(t)] = sizes.setdefault(id(t), _nbytes(t, batch_size))
    current = sum(live.values())
    peak, peak_at = current, None
    for i, (op, scope, ins, outs) in enumerate(walker.events):
        for t in outs:
            if id(t) not in live:
                live[id(t)] = sizes.setdefault(id(t), _nbytes(t, batch_size))
                current += live[id(t)]
        if current > peak:
            peak, peak_at = current, "/".join((*scope, op.name))
        for t in (*ins, *outs):
            if id(t) in live and last_use.get(id(t), i) <= i:
                current -= live.pop(id(t))

    trainable = int(sum(math.prod(w.shape) for w in model.trainable_weights))
    return {
        "params": int(model.count_params()),
        "trainable_params": trainable,
        "madds": int(sum(madds_by_type.values())),
        "madds_by_type": madds_by_type,
        "atrous_padding_madds": int(atrous_padding),
        "peak_activation_bytes": int(peak),
        "peak_activation_layer": peak_at,
        "batch_size": batch_size,
        "input_shapes": [tuple(t.shape) for t in inputs],
        "output_shapes": [tuple(t.shape) for t in outputs],
        "layers": rows,
        "notes": notes,
    }


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def format_profile(profile: dict, layers: bool = True) -> str:
    """A text report of `profile_model` output: totals first, then (optionally) one line per op."""
    by = profile["madds_by_type"]
    peak = profile["peak_activation_bytes"]
    lines = [
        f"params            {profile['params']:>15,}  ({_human(profile['params'])})",
        f"trainable params  {profile['trainable_params']:>15,}",
        f"MAdds             {profile['madds']:>15,}  ({_human(profile['madds'])})",
        "  " + ", ".join(f"{k} {_human(v)}" for k, v in by.items()),
        *([f"  of which {_human(profile['atrous_padding_madds'])} on the padding of dilated "
           f"convs (TensorFlow's space-to-batch)"] if profile.get("atrous_padding_madds") else []),
        f"peak activations  {peak:>15,} B  ({peak / 2**20:.2f} MiB at batch "
        f"{profile['batch_size']}, at {profile.get('peak_activation_layer')})",
        f"inputs {profile['input_shapes']}  outputs {profile['output_shapes']}",
        *(f"note: {n}" for n in profile.get("notes", [])),
    ]
    if layers:
        rows = [(("/".join(filter(None, (r["scope"], r["name"])))), r["class"],
                 str(r["output_shape"]), f"{r['params']:,}", f"{r['madds']:,}")
                for r in profile["layers"]]
        head = ("layer", "class", "output shape", "params", "MAdds")
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
                  for i, h in enumerate(head)]

        def fmt(r):
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths)))

        lines += ["", fmt(head), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in rows]
    return "\n".join(lines)
