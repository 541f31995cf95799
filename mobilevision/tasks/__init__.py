"""Tasks: each is a few small parts (model with its decoder, loss, training transform,
evaluation, pictures; see `base.Task`). Registry: name -> Task."""

from mobilevision.tasks import classification, detection, segmentation
from mobilevision.tasks.base import Evaluation, Task, build_backbone

TASKS = {t.name: t for t in (classification.TASK, detection.TASK, segmentation.TASK)}


def build_model(cfg, input_size=None):
    """The task model of `cfg` (uncompiled, with its decoder), `model.weights` loaded if set:
    a Keras 3 file of this same model with Keras' own loader, any other model's file (other
    classes, another task: fine-tuning) by layer name, every layer whose shape fits loaded and
    the rest started fresh (`load_model_weights`). What was loaded: `base.weights_report(model)`.
    input_size: (H, W), default `model.input_size`."""
    model = TASKS[cfg.task].build(cfg, input_size)
    if cfg.model.weights:
        from mobilevision.backbones.weights import load_model_weights

        report = load_model_weights(model, cfg.model.weights)
        object.__setattr__(model, "weights_report", report)
    return model


def training_dataset(cfg, model, source=None, input_context=None):
    """The training pipeline of `cfg` for `model` (whose input size, and for a detector whose
    anchors, the targets follow): `data.pipeline.build_dataset` with the task's transform.
    source: the config's data source (default `source_for(cfg)`); input_context: see
    build_dataset. -> (dataset of batches, number of examples in the split)."""
    from mobilevision.data.pipeline import build_dataset
    from mobilevision.data.sources import source_for

    source = source or source_for(cfg)
    return build_dataset(source, cfg.data.train_split, training=True,
                         transform=TASKS[cfg.task].transform(cfg, model),
                         batch_size=cfg.train.batch_size, seed=cfg.seed,
                         shuffle_buffer=cfg.data.shuffle_buffer, input_context=input_context)


__all__ = ["TASKS", "Task", "Evaluation", "build_model", "build_backbone", "training_dataset"]
