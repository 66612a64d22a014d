"""Training for a wall-clock budget instead of a fixed number of epochs (``train.py --time H``).

The lr schedule needs to know the run's length, so the number of epochs is re-estimated after
every epoch from the mean epoch time so far (training plus validation): the run then ends, with
its schedule completed, close to the budget. The estimate only moves while the run is not yet
past its last planned epoch, and the run stops at once when the budget is spent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TimeBudget:
    """Epoch planning for a run limited to ``seconds`` of wall time.

    Attributes:
        seconds: the budget (s); the run's clock starts when training starts.
        epochs: planned total epochs; updated by :meth:`replan`.
    """

    seconds: float
    epochs: int

    def replan(self, epochs_done: int, elapsed: float) -> int:
        """Planned total epochs after ``epochs_done`` epochs took ``elapsed`` seconds.

        ``floor(budget / mean epoch time)``, at least ``epochs_done`` + 1 while time is left so an
        early, slow epoch (label cache, first-batch overheads) cannot end the run alone.
        """
        if epochs_done < 1 or elapsed <= 0:
            return self.epochs
        per_epoch = elapsed / epochs_done
        planned = math.floor(self.seconds / per_epoch)
        floor = epochs_done + 1 if elapsed < self.seconds else epochs_done
        self.epochs = max(planned, floor, 1)
        return self.epochs

    def spent(self, elapsed: float) -> bool:
        """True once the budget is used up."""
        return elapsed >= self.seconds
