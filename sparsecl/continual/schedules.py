"""Learning-rate schedules of ``sparsecl continual``, restarted at every task.

The learning rate at a task's step ``s`` is ``lr * factor(s)``, a pure function of the step, so a run
resumed from a mid-task checkpoint continues on exactly the schedule it was on (no scheduler state).

  * ``constant``: factor 1.
  * ``multistep``: the reference paper's schedule (``MultiStepLR`` stepped once per epoch, milestones
    ``int(m * epochs)`` for each fraction ``m`` in ``milestones``): in epoch ``e`` (0-based) the factor is
    ``gamma ** k``, ``k`` = the number of milestones ``M <= e``. As in ``MultiStepLR``, a milestone at epoch 0
    (a fraction of a 1-epoch task) applies from the first step, and repeated milestones count repeatedly.
    The paper: [0.5, 0.75], gamma 0.1 (100 epochs: x0.1 from epoch 50, x0.01 from epoch 75).
  * ``cosine``: per step, ``0.5 * (1 + cos(pi * s / steps))`` over the task's ``steps``, from 1 down to 0.
"""
import math

NAMES = ("constant", "multistep", "cosine")


class LRSchedule:
    """The schedule of one task: ``cfg`` = config ``lr_schedule`` ({name, milestones, gamma}), ``lr`` the base
    learning rate, ``steps_per_epoch`` and ``epochs`` the task's."""

    def __init__(self, cfg, lr, steps_per_epoch, epochs):
        if cfg["name"] not in NAMES:
            raise ValueError(f"lr_schedule.name must be one of {NAMES}, got {cfg['name']!r}")
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch} and {epochs}")
        self.name, self.lr = cfg["name"], float(lr)
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.gamma = float(cfg.get("gamma", 0.1))
        self.milestone_epochs = sorted(int(m * self.epochs) for m in cfg.get("milestones", ()))

    @property
    def steps(self):
        return self.steps_per_epoch * self.epochs

    def factor(self, step):
        """Multiplier of the base learning rate at task step ``step`` (0-based)."""
        if self.name == "multistep":
            epoch = step // self.steps_per_epoch
            return self.gamma ** sum(m <= epoch for m in self.milestone_epochs)
        if self.name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, self.steps) / self.steps))
        return 1.0

    def apply(self, optimizer, step):
        """Set every parameter group's learning rate for task step ``step``."""
        lr = self.lr * self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
