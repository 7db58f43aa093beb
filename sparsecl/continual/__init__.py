"""Task-incremental continual learning with dynamic sparse training on sparsecl's sparse layers."""
from .data import Task, load_tasks, mini_imagenet, split_cifar100, split_digits
from .memory import InsufficientMemoryError, check_memory, estimate_bytes
from .metrics import average_accuracy, backward_transfer, forgetting, forward_transfer, summary
from .models import build_model
from .ownership import FrozenGuard, Ownership
from .trainer import DEFAULTS, ContinualTrainer

__all__ = ["ContinualTrainer", "DEFAULTS", "FrozenGuard", "InsufficientMemoryError", "Ownership", "Task",
           "average_accuracy", "backward_transfer", "build_model", "check_memory", "estimate_bytes", "forgetting",
           "forward_transfer", "load_tasks", "mini_imagenet", "split_cifar100", "split_digits", "summary"]
