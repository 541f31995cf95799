"""TFLite Model Metadata that MediaPipe Tasks reads: input normalization, output names, labels.

`add_metadata(model, task=..., labels=..., name=...)` returns the TFLite file with a
"TFLITE_METADATA" buffer (the published TFLite Metadata schema, bound by flatc in
`export/schema/`) and the label file packed as an associated file: an uncompressed zip appended
to the flatbuffer, where MediaPipe's metadata extractor finds it. `read_metadata` returns a plain
summary of both, for tests and for eyes.

What MediaPipe Tasks checks, hence what is written:
- input: ImageProperties RGB, and NormalizationOptions, which a float32 input must have: MediaPipe
  feeds (pixel - mean) / std with one mean and std for all channels, so mean 0 and std 1 feed the
  raw 0..255 pixels our files take. A uint8 input gets the raw pixels whatever the metadata says,
  so its quantization must map q to q (the converter fits it so); the same NormalizationOptions
  are written for it too, as the schema asks of quantized models.
- detection: the four TFLite_Detection_PostProcess outputs, found by metadata name: "location"
  (BoundingBoxProperties BOUNDARIES + RATIO; index [1, 0, 3, 2] because our boxes are
  [ymin, xmin, ymax, xmax] and the default order is [left, top, right, bottom]), "category" (the
  label file as TENSOR_VALUE_LABELS: classes are 0-based indices into it), "score",
  "number of detections".
- classification: the label file as TENSOR_AXIS_LABELS on the probabilities.
- segmentation: TENSOR_AXIS_LABELS on the scores, and the custom metadata "SEGMENTER_METADATA"
  (ImageSegmenterOptions, activation NONE: the scores are softmax probabilities already).

Output tensor metadata follow the subgraph's output order, which the converter does not keep equal
to the signature's; each output is identified by its SignatureDef name.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import flatbuffers
import numpy as np

from mobilevision.export.formats import ExportError
from mobilevision.export.schema import image_segmenter_metadata_schema_generated as seg_fb
from mobilevision.export.schema import metadata_schema_generated as meta_fb

METADATA_NAME = "TFLITE_METADATA"  # the Model.metadata entry LiteRT tools and MediaPipe read
METADATA_IDENTIFIER = b"M001"  # metadata_schema.fbs file_identifier (schema 1.x)
SEGMENTER_METADATA_NAME = "SEGMENTER_METADATA"  # the CustomMetadata name MediaPipe looks up
SEGMENTER_IDENTIFIER = b"V001"  # image_segmenter_metadata_schema.fbs file_identifier
LABEL_FILE = "labels.txt"
TFLITE_IDENTIFIER = b"TFL3"

# Our TFLite files take RGB pixels 0..255 and normalize inside; (p - 0) / 1 feeds them unchanged.
INPUT_MEAN = (0.0, 0.0, 0.0)
INPUT_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class _Output:
    """One output of a task's TFLite signature and how its TensorMetadata describes it."""
    signature_name: str  # the SignatureDef output name (serving.tflite_outputs)
    name: str            # TensorMetadata.name; MediaPipe's ObjectDetector finds outputs by it
    description: str
    kind: str            # boxes | value_labels | axis_labels | mask | feature
    value_range: tuple | None = None  # Content.range: the axes one content item spans


TASK_OUTPUTS = {
    "detection": (
        _Output("boxes", "location",
                "Boxes [ymin, xmin, ymax, xmax] normalized to the image and clipped to it, "
                "(1, D, 4).", "boxes", (2, 2)),
        _Output("classes", "category",
                f"Class of each box: 0-based index into {LABEL_FILE}, (1, D).", "value_labels",
                (2, 2)),
        _Output("scores", "score", "Score of each box, (1, D).", "feature", (2, 2)),
        _Output("count", "number of detections", "Number of valid boxes, (1,).", "feature"),
    ),
    "classification": (
        _Output("probabilities", "probabilities",
                f"Probability of each label of {LABEL_FILE}, (1, K).", "axis_labels"),
    ),
    "segmentation": (
        _Output("scores", "scores", f"Per-pixel probability of each label of {LABEL_FILE} at "
                "the input resolution, (1, H, W, K).", "mask", (1, 2)),
    ),
}


# -- public API ---------------------------------------------------------------------------------

def add_metadata(model: bytes, *, task: str, labels: list[str], name: str, description: str = "",
                 version: str = "", author: str = "mobilevision", license: str = "",
                 extra_files: dict | None = None) -> bytes:
    """The TFLite file `model` with TFLite Metadata for `task` and `labels` packed as labels.txt.

    Args:
      model: a TFLite flatbuffer from `tflite.convert_tflite`: one input (1, H, W, 3) float32
        pixels 0..255 or uint8 pixels, and one SignatureDef whose outputs are the task's
        (`TASK_OUTPUTS`). Metadata and associated files it already has are replaced.
      task: "detection", "classification" or "segmentation".
      labels: class names, one per class index (detection: without background).
      name, description, version, author, license: the ModelMetadata fields (empty: left out).
      extra_files: {name: text} packed beside labels.txt (MediaPipe reads only the files the
        metadata names; `runtime.INFO_FILE` travels this way).

    Returns the new file's bytes. Raises ExportError (a ValueError) when the model or the labels
    do not fit the task, naming what was found and what was expected.
    """
    if task not in TASK_OUTPUTS:
        raise ExportError(f"task {task!r}: metadata is written for {', '.join(TASK_OUTPUTS)}")
    labels = _check_labels(labels)
    model = bytes(model)
    tflite = _read_model(model)
    subgraph = tflite.subgraphs[0]
    order = output_order(model, task)
    image = _check_input(subgraph)
    _check_label_count(tflite, task, labels, order)

    outputs = {o.signature_name: o for o in TASK_OUTPUTS[task]}
    sub = meta_fb.SubGraphMetadataT()
    sub.name = name
    sub.inputTensorMetadata = [_input_metadata(image)]
    sub.outputTensorMetadata = [_output_metadata(outputs[n]) for n in order]
    if task == "detection":
        # Bundles box, class and score of each detection (schema 1.2.0); the count stays apart.
        group = meta_fb.TensorGroupT()
        group.name = "detection_result"
        group.tensorNames = ["location", "category", "score"]
        sub.outputTensorGroups = [group]
    if task == "segmentation":
        custom = meta_fb.CustomMetadataT()
        custom.name = SEGMENTER_METADATA_NAME
        custom.data = _segmenter_options(seg_fb.Activation.NONE)
        sub.customMetadata = [custom]

    meta = meta_fb.ModelMetadataT()
    meta.name = name
    meta.description = description or None
    meta.version = version or None
    meta.author = author or None
    meta.license = license or None
    meta.subgraphMetadata = [sub]
    meta.minParserVersion = min_parser_version(meta)
    builder = flatbuffers.Builder(1024)
    builder.Finish(meta.Pack(builder), file_identifier=METADATA_IDENTIFIER)
    _set_metadata_buffer(tflite, bytes(builder.Output()))
    return _append_zip(_write_model(tflite), {LABEL_FILE: "".join(f"{x}\n" for x in labels),
                                              **(extra_files or {})})


def read_metadata(model: bytes) -> dict:
    """A readable summary of a TFLite file's metadata:

    {"name", "description", "version", "author", "license", "min_parser_version",
     "inputs": [tensor], "outputs": [tensor] (in the subgraph's output order),
     "signature_outputs": the SignatureDef name of each subgraph output, in the same order,
     "output_tensor_groups": [{"name", "tensor_names"}],
     "custom_metadata": {name: decoded dict (SEGMENTER_METADATA) or raw bytes},
     "associated_files": {file name: text} (the zip appended to the model)}

    where a tensor is {"name", "description", "content", "range", "normalization", "stats",
    "associated_files", ...}. Raises ExportError when the file has no TFLite Metadata."""
    from ai_edge_litert import schema_py_generated as tfl

    model = bytes(model)
    if model[4:8] != TFLITE_IDENTIFIER:
        raise ExportError("not a TFLite file (no 'TFL3' flatbuffer identifier)")
    root = tfl.Model.GetRootAs(model, 0)
    raw = None
    for i in range(root.MetadataLength()):
        if _text(root.Metadata(i).Name()) == METADATA_NAME:
            raw = _buffer_bytes(model, root.Buffers(root.Metadata(i).Buffer()))
    if raw is None:
        raise ExportError(f"the TFLite file has no {METADATA_NAME} metadata")
    if not meta_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0):
        raise ExportError(f"{METADATA_NAME} is not TFLite Metadata (identifier {raw[4:8]!r}, "
                          f"expected {METADATA_IDENTIFIER!r})")
    meta = meta_fb.ModelMetadataT.InitFromObj(meta_fb.ModelMetadata.GetRootAs(raw, 0))
    sub = (meta.subgraphMetadata or [meta_fb.SubGraphMetadataT()])[0]
    signature = _signature_outputs(root)
    subgraph = root.Subgraphs(0)
    return {
        "name": _text(meta.name), "description": _text(meta.description),
        "version": _text(meta.version), "author": _text(meta.author),
        "license": _text(meta.license), "min_parser_version": _text(meta.minParserVersion),
        "inputs": [_tensor_summary(t) for t in sub.inputTensorMetadata or []],
        "outputs": [_tensor_summary(t) for t in sub.outputTensorMetadata or []],
        "signature_outputs": [signature.get(int(subgraph.Outputs(i)))
                              for i in range(subgraph.OutputsLength())],
        "output_tensor_groups": [{"name": _text(g.name),
                                  "tensor_names": [_text(n) for n in g.tensorNames or []]}
                                 for g in sub.outputTensorGroups or []],
        "custom_metadata": {_text(c.name): _custom_summary(_text(c.name), c.data)
                            for c in sub.customMetadata or []},
        "associated_files": associated_files(model),
    }


def associated_files(model: bytes) -> dict:
    """{name: text} of the files packed in the zip appended to a TFLite file ({} when none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as zf:
            return {i.filename: zf.read(i).decode("utf-8") for i in zf.infolist()}
    except zipfile.BadZipFile:
        return {}


def output_order(model: bytes, task: str) -> list[str]:
    """The signature name of each output of the model's subgraph, in the subgraph's order (what
    output tensor metadata must follow), checked against the task's outputs."""
    from ai_edge_litert import schema_py_generated as tfl

    if task not in TASK_OUTPUTS:
        raise ExportError(f"task {task!r}: metadata is written for {', '.join(TASK_OUTPUTS)}")
    if bytes(model[4:8]) != TFLITE_IDENTIFIER:
        raise ExportError("not a TFLite file (no 'TFL3' flatbuffer identifier)")
    root = tfl.Model.GetRootAs(model, 0)
    if root.SubgraphsLength() != 1:
        raise ExportError(f"expected a TFLite file with one subgraph (MediaPipe Tasks runs no "
                          f"other), found {root.SubgraphsLength()}")
    expected = sorted(o.signature_name for o in TASK_OUTPUTS[task])
    names = _signature_outputs(root)
    subgraph = root.Subgraphs(0)
    tensors = [int(subgraph.Outputs(i)) for i in range(subgraph.OutputsLength())]
    if sorted(names.values()) != expected or sorted(names) != sorted(tensors):
        found = sorted(names.values())
        raise ExportError(f"the model's signature outputs {found} (subgraph outputs: "
                          f"{len(tensors)} tensors) do not match the {task} outputs {expected}")
    return [names[t] for t in tensors]


def min_parser_version(meta) -> str:
    """The smallest metadata parser version that understands every field `meta` (a
    ModelMetadataT) populates: the largest "Added in" version of metadata_schema.fbs among them,
    and 1.0.0 for the "M001" identifier."""
    fb = meta_fb
    file_types = {fb.AssociatedFileType.VOCABULARY: (1, 0, 1),
                  fb.AssociatedFileType.SCANN_INDEX_FILE: (1, 4, 0)}
    unit_types = {fb.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
                  fb.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
                  fb.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1)}
    needed = [(1, 0, 0)]

    def files(items):
        for f in items or ():
            needed.append(file_types.get(f.type, (1, 0, 0)))
            if f.version is not None:
                needed.append((1, 4, 1))

    def units(items):
        for u in items or ():
            needed.append(unit_types.get(u.optionsType, (1, 0, 0)))
            for attr in ("vocabFile", "sentencePieceModel"):  # tokenizers' own files
                files(getattr(u.options, attr, None))

    files(meta.associatedFiles)
    for sub in meta.subgraphMetadata or ():
        files(sub.associatedFiles)
        if sub.inputProcessUnits or sub.outputProcessUnits:
            needed.append((1, 1, 0))
        units(sub.inputProcessUnits)
        units(sub.outputProcessUnits)
        if sub.inputTensorGroups or sub.outputTensorGroups:
            needed.append((1, 2, 0))
        if sub.customMetadata:
            needed.append((1, 5, 0))
        for t in (sub.inputTensorMetadata or []) + (sub.outputTensorMetadata or []):
            files(t.associatedFiles)
            units(t.processUnits)
            if t.content is not None and (t.content.contentPropertiesType
                                          == fb.ContentProperties.AudioProperties):
                needed.append((1, 3, 0))
    return ".".join(str(v) for v in max(needed))


# -- checks -------------------------------------------------------------------------------------

def _check_labels(labels) -> list[str]:
    if isinstance(labels, str) or not labels:
        raise ExportError(f"labels: expected a non-empty list of class names, got {labels!r}")
    labels = [str(x) for x in labels]
    bad = [x for x in labels if not x.strip() or "\n" in x or "\r" in x]
    if bad:
        raise ExportError(f"labels: a label must be one non-blank line, got {bad[:3]!r}")
    return labels


def _check_input(subgraph):
    """The subgraph's one image input, checked against what MediaPipe's preprocessing feeds."""
    from ai_edge_litert import schema_py_generated as tfl

    if len(subgraph.inputs) != 1:
        raise ExportError(f"expected one image input, found {len(subgraph.inputs)} inputs")
    t = subgraph.tensors[subgraph.inputs[0]]
    shape = [int(d) for d in t.shape]
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise ExportError(f"expected an input image (1, H, W, 3), found {tuple(shape)}")
    if t.type not in (tfl.TensorType.FLOAT32, tfl.TensorType.UINT8):
        kind = {v: k for k, v in vars(tfl.TensorType).items() if not k.startswith("_")}
        raise ExportError(f"input type {kind.get(t.type, t.type)}: MediaPipe Tasks feeds images "
                          f"as FLOAT32 or UINT8 only")
    if t.type == tfl.TensorType.UINT8:
        q = t.quantization
        scale = [float(s) for s in (q.scale if q is not None and q.scale is not None else [])]
        zero = [int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else [])]
        # MediaPipe hands the raw pixel bytes over: they must mean pixels 0..255 to the model
        # (255 * scale within half a step of 255).
        if len(scale) == 1 and (abs(scale[0] * 255 - 255) > 0.5 or zero != [0]):
            raise ExportError(f"uint8 input quantization scale {scale[0]}, zero point {zero}: "
                              f"MediaPipe feeds pixel bytes 0..255 unchanged, so the input must "
                              f"be quantized with scale 1, zero point 0")
    return t


def _check_label_count(tflite, task, labels, order) -> None:
    """len(labels) must be the model's class count: the last axis of the probabilities or scores,
    or the detection op's num_classes (its custom options are a FlexBuffer map)."""
    subgraph = tflite.subgraphs[0]
    if task == "detection":
        from flatbuffers import flexbuffers

        counts = set()
        for op in subgraph.operators:
            code = tflite.operatorCodes[op.opcodeIndex]
            if (_text(code.customCode) == "TFLite_Detection_PostProcess"
                    and op.customOptions is not None):
                options = flexbuffers.Loads(bytes(np.asarray(op.customOptions, np.uint8)))
                counts.add(int(options["num_classes"]))
        found = counts.pop() if len(counts) == 1 else None
        what = "TFLite_Detection_PostProcess num_classes"
    else:
        t = subgraph.tensors[subgraph.outputs[0]]
        found = int(t.shape[-1]) if t.shape is not None and len(t.shape) else None
        what = f"last axis of {order[0]!r}"
    if found is not None and found != len(labels):
        raise ExportError(f"{len(labels)} labels for a model with {found} classes ({what})")


# -- metadata tables ----------------------------------------------------------------------------

def _content(kind: int, properties, value_range=None):
    content = meta_fb.ContentT()
    content.contentPropertiesType = kind
    content.contentProperties = properties
    if value_range is not None:
        content.range = meta_fb.ValueRangeT()
        content.range.min, content.range.max = value_range
    return content


def _label_file(file_type: int):
    f = meta_fb.AssociatedFileT()
    f.name = LABEL_FILE
    f.description = "Class names, one per line, in class index order."
    f.type = file_type
    return f


def _stats(lo, hi):
    stats = meta_fb.StatsT()
    stats.min, stats.max = list(lo), list(hi)
    return stats


def _input_metadata(tensor):
    """ImageProperties RGB (default size = the fixed input size), NormalizationOptions and Stats of
    pixels 0..255."""
    from ai_edge_litert import schema_py_generated as tfl

    props = meta_fb.ImagePropertiesT()
    props.colorSpace = meta_fb.ColorSpaceType.RGB
    props.defaultSize = meta_fb.ImageSizeT()
    props.defaultSize.height, props.defaultSize.width = int(tensor.shape[1]), int(tensor.shape[2])
    norm = meta_fb.NormalizationOptionsT()
    norm.mean, norm.std = list(INPUT_MEAN), list(INPUT_STD)
    unit = meta_fb.ProcessUnitT()
    unit.optionsType = meta_fb.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    pixels = "uint8" if tensor.type == tfl.TensorType.UINT8 else "float32"
    t = meta_fb.TensorMetadataT()
    t.name = "image"
    t.description = f"RGB image, {pixels} pixels 0..255, (1, H, W, 3)."
    t.content = _content(meta_fb.ContentProperties.ImageProperties, props)
    t.processUnits = [unit]
    t.stats = _stats([0.0] * 3, [255.0] * 3)
    return t


def _output_metadata(out: _Output):
    t = meta_fb.TensorMetadataT()
    t.name = out.name
    t.description = out.description
    feature = meta_fb.FeaturePropertiesT()
    fp = meta_fb.ContentProperties
    if out.kind == "boxes":
        box = meta_fb.BoundingBoxPropertiesT()
        box.index = [1, 0, 3, 2]  # left, top, right, bottom are at 1, 0, 3, 2 of [y0, x0, y1, x1]
        box.type = meta_fb.BoundingBoxType.BOUNDARIES
        box.coordinateType = meta_fb.CoordinateType.RATIO
        t.content = _content(fp.BoundingBoxProperties, box, out.value_range)
    elif out.kind == "value_labels":
        t.content = _content(fp.FeatureProperties, feature, out.value_range)
        t.associatedFiles = [_label_file(meta_fb.AssociatedFileType.TENSOR_VALUE_LABELS)]
    elif out.kind == "axis_labels":
        t.content = _content(fp.FeatureProperties, feature, out.value_range)
        t.stats = _stats([0.0], [1.0])
        t.associatedFiles = [_label_file(meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS)]
    elif out.kind == "mask":
        # A (1, H, W, K) stack of K probability images: the content spans the image axes 1..2.
        props = meta_fb.ImagePropertiesT()
        props.colorSpace = meta_fb.ColorSpaceType.GRAYSCALE
        t.content = _content(fp.ImageProperties, props, out.value_range)
        t.stats = _stats([0.0], [1.0])
        t.associatedFiles = [_label_file(meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS)]
    else:
        t.content = _content(fp.FeatureProperties, feature, out.value_range)
    return t


def _segmenter_options(activation: int) -> list[int]:
    """The ImageSegmenterOptions flatbuffer ("V001") MediaPipe reads from SEGMENTER_METADATA."""
    options = seg_fb.ImageSegmenterOptionsT()
    options.activation = activation
    options.minParserVersion = "1.0.0"  # the only version of image_segmenter_metadata_schema.fbs
    builder = flatbuffers.Builder(64)
    builder.Finish(options.Pack(builder), file_identifier=SEGMENTER_IDENTIFIER)
    # A list, not bytes: CustomMetadataT.Pack then writes it 16-byte aligned (force_align: 16).
    return list(bytes(builder.Output()))


# -- the model flatbuffer -----------------------------------------------------------------------

def _read_model(data: bytes):
    """The TFLite file as the object API's ModelT, with data stored past the flatbuffer (files
    over 2 GB) moved inline, since the file is written anew."""
    from ai_edge_litert import schema_py_generated as tfl

    if data[4:8] != TFLITE_IDENTIFIER:
        raise ExportError("not a TFLite file (no 'TFL3' flatbuffer identifier)")
    model = tfl.ModelT.InitFromObj(tfl.Model.GetRootAs(data, 0))
    for buf in model.buffers or []:
        if buf.offset > 1:
            buf.data = np.frombuffer(data, np.uint8, buf.size, buf.offset)
            buf.offset = buf.size = 0
    for subgraph in model.subgraphs or []:
        for op in subgraph.operators or []:
            if op.largeCustomOptionsOffset > 1:
                op.customOptions = np.frombuffer(data, np.uint8, op.largeCustomOptionsSize,
                                                 op.largeCustomOptionsOffset)
                op.largeCustomOptionsOffset = op.largeCustomOptionsSize = 0
    return model


def _set_metadata_buffer(model, data: bytes) -> None:
    """Point Model.metadata["TFLITE_METADATA"] at `data`, reusing its buffer if it has one."""
    from ai_edge_litert import schema_py_generated as tfl

    model.metadata = model.metadata or []
    entry = next((m for m in model.metadata if _text(m.name) == METADATA_NAME), None)
    if entry is None:
        entry = tfl.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers)
        model.buffers.append(tfl.BufferT())
        model.metadata.append(entry)
    model.buffers[entry.buffer].data = np.frombuffer(data, np.uint8)


def _write_model(model) -> bytes:
    """Serialize a ModelT, every buffer's data 16-byte aligned as schema.fbs asks
    (`force_align: 16`; the generated Python packer aligns to the element size only)."""
    from ai_edge_litert import schema_py_generated as tfl

    class AlignedBuffer(tfl.BufferT):
        def Pack(self, builder):  # noqa: N802 (the flatc object API's name)
            data = None
            if self.data is not None:
                raw = np.asarray(self.data, np.uint8).tobytes()
                builder.StartVector(1, len(raw), 16)
                builder.head -= len(raw)
                builder.Bytes[builder.head:builder.head + len(raw)] = raw
                data = builder.EndVector()
            tfl.BufferStart(builder)
            if data is not None:
                tfl.BufferAddData(builder, data)
            tfl.BufferAddOffset(builder, self.offset)
            tfl.BufferAddSize(builder, self.size)
            return tfl.BufferEnd(builder)

    size = 0
    for i, buf in enumerate(model.buffers):
        aligned = AlignedBuffer()
        aligned.data, aligned.offset, aligned.size = buf.data, buf.offset, buf.size
        model.buffers[i] = aligned
        size += 0 if buf.data is None else len(buf.data) + 16
    builder = flatbuffers.Builder(size + (1 << 20))
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def _append_zip(model: bytes, files: dict) -> bytes:
    """Append `files` ({name: text}) as an uncompressed zip (MediaPipe reads associated files in
    place, and refuses compressed ones). Fixed timestamps keep the output reproducible."""
    out = io.BytesIO(model)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, text in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, text.encode("utf-8"))
    return out.getvalue()


# -- reading helpers ----------------------------------------------------------------------------

def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _buffer_bytes(data: bytes, buffer) -> bytes:
    if buffer.Offset() > 1:
        return data[buffer.Offset():buffer.Offset() + buffer.Size()]
    return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""


def _signature_outputs(root) -> dict:
    """{tensor index: SignatureDef output name} of the one signature on subgraph 0."""
    signatures = [root.SignatureDefs(i) for i in range(root.SignatureDefsLength())]
    signatures = [s for s in signatures if s.SubgraphIndex() == 0]
    if len(signatures) != 1:
        raise ExportError(f"expected one SignatureDef for subgraph 0 (its names identify the "
                          f"outputs), found {len(signatures)}")
    sig = signatures[0]
    return {int(sig.Outputs(i).TensorIndex()): _text(sig.Outputs(i).Name())
            for i in range(sig.OutputsLength())}


def _names(cls) -> dict:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_")}


def _tensor_summary(t) -> dict:
    fb = meta_fb
    out = {"name": _text(t.name), "description": _text(t.description)}
    if t.content is not None:
        kind = _names(fb.ContentProperties).get(t.content.contentPropertiesType)
        out["content"] = kind
        p = t.content.contentProperties
        if kind == "ImageProperties":
            out["color_space"] = _names(fb.ColorSpaceType).get(p.colorSpace)
            if p.defaultSize is not None:
                out["default_size"] = [p.defaultSize.width, p.defaultSize.height]
        elif kind == "BoundingBoxProperties":
            out["bounding_box"] = {
                "index": [int(i) for i in p.index] if p.index is not None else None,
                "type": _names(fb.BoundingBoxType).get(p.type),
                "coordinate_type": _names(fb.CoordinateType).get(p.coordinateType)}
        if t.content.range is not None:
            out["range"] = [t.content.range.min, t.content.range.max]
    for unit in t.processUnits or []:
        kind = _names(fb.ProcessUnitOptions).get(unit.optionsType)
        if kind == "NormalizationOptions":
            out["normalization"] = {"mean": [float(v) for v in unit.options.mean],
                                    "std": [float(v) for v in unit.options.std]}
        else:
            out.setdefault("process_units", []).append(kind)
    if t.stats is not None:
        out["stats"] = {"min": [float(v) for v in (t.stats.min if t.stats.min is not None else [])],
                        "max": [float(v) for v in (t.stats.max if t.stats.max is not None else [])]}
    out["associated_files"] = [
        {"name": _text(f.name), "type": _names(fb.AssociatedFileType).get(f.type),
         "description": _text(f.description)} for f in t.associatedFiles or []]
    return out


def _custom_summary(name: str, data):
    raw = np.asarray(data if data is not None else [], np.uint8).tobytes()
    if name == SEGMENTER_METADATA_NAME and seg_fb.ImageSegmenterOptions \
            .ImageSegmenterOptionsBufferHasIdentifier(raw, 0):
        options = seg_fb.ImageSegmenterOptions.GetRootAs(raw, 0)
        return {"activation": _names(seg_fb.Activation).get(options.Activation()),
                "min_parser_version": _text(options.MinParserVersion())}
    return raw
