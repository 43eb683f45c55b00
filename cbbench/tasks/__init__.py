"""Tasks: one family per module, all running through the batch loop in tasks/base.py."""
from cbbench.tasks.base import TASKS, Task, TaskContext, TaskResult
from cbbench.tasks.context import RunSettings

# Importing the families registers their tasks.
from cbbench.tasks import (  # noqa: E402,F401
    adversarial, attention, autoattack, calibration, clean, corruptions, cost, epsilon_sweep, imagenet,
    imagenet_c_generated, occlusion, transfer_attack, transfer_learning,
)

__all__ = ["TASKS", "RunSettings", "Task", "TaskContext", "TaskResult"]
