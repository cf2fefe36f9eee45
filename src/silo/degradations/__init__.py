"""Pixel-space degradations ``y = A(x) + n`` on images in [-1, 1], and the shipped task files."""

from silo.degradations.base import Degradation, Identity, Params, generators_for
from silo.degradations.blur import GaussianBlur, MotionBlur
from silo.degradations.inpainting import Inpainting
from silo.degradations.jpeg import JPEG
from silo.degradations.noise import add_noise, to_model_scale
from silo.degradations.resize import imresize
from silo.degradations.super_resolution import SuperResolution
from silo.degradations.tasks import DEGRADATIONS, Task, build_degradation, list_tasks, load_task

__all__ = [
    "DEGRADATIONS",
    "Degradation",
    "GaussianBlur",
    "Identity",
    "Inpainting",
    "JPEG",
    "MotionBlur",
    "Params",
    "SuperResolution",
    "Task",
    "add_noise",
    "build_degradation",
    "generators_for",
    "imresize",
    "list_tasks",
    "load_task",
    "to_model_scale",
]
