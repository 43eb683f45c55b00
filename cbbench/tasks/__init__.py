"""Tasks: one family per module, all running through the batch loop in tasks/base.py."""
from cbbench.tasks.base import TASKS, Task, TaskContext, TaskResult

# Importing the families registers their tasks.
from cbbench.tasks import adversarial, attention, clean, corruptions, cost, imagenet  # noqa: E402,F401

__all__ = ["TASKS", "Task", "TaskContext", "TaskResult"]
