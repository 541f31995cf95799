"""Tasks: each ties a model, its data, loss, metrics and post-processing. Registry: name -> class."""

from mobilevision.tasks.base import Task, build_backbone
from mobilevision.tasks.classification import ClassificationTask
from mobilevision.tasks.detection import DetectionTask
from mobilevision.tasks.segmentation import SegmentationTask

TASKS = {"classification": ClassificationTask, "detection": DetectionTask,
         "segmentation": SegmentationTask}


def get_task(cfg) -> Task:
    return TASKS[cfg.task](cfg)


def build_model(cfg):
    """The task model of `cfg` (uncompiled), `model.weights` loaded if set."""
    return get_task(cfg).build_model()


__all__ = ["TASKS", "Task", "get_task", "build_model", "build_backbone"]
