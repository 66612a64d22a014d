"""StepGuard: non-finite losses and stop requests, agreed by every process before a step.

One bad batch must not end a run that has trained for hours: a non-finite loss skips its step
with a warning, and only ``MAX_NONFINITE_IN_A_ROW`` of them in a row (a run that has diverged)
stop it. A stop request (SIGTERM, SIGINT: utils/graceful_stop.py) ends the epoch early.

Under DDP every process must take the same branch (a process that skips a backward pass that the
others run would hang them in the gradient all-reduce), so the verdict is all-reduced (max) over
the job at every :meth:`StepGuard.poll`. Between polls the guard only queues device ops, so the
GPU queue is not stalled by a read-back on every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.distributed import all_reduce_

MAX_NONFINITE_IN_A_ROW = 5  # consecutive non-finite losses that mean the run has diverged


@dataclass(frozen=True)
class Verdict:
    """What the job agreed at a poll.

    Attributes:
        nonfinite: non-finite losses since the previous poll (max over processes).
        in_a_row: the longest run of consecutive non-finite losses up to now (max over processes).
        batch: the batch index of the last non-finite loss since the previous poll, -1 if none.
        stop: a process was asked to stop.
    """

    nonfinite: int
    in_a_row: int
    batch: int
    stop: bool


class StepGuard:
    """Watches the losses of an epoch on the device; :meth:`poll` reads the job's verdict once."""

    def __init__(self, device: torch.device):
        z = torch.zeros((), device=device)
        self.run, self.longest, self.count, self.batch = z.clone(), z.clone(), z.clone(), z - 1
        self.last_value = z.clone()  # this process's last non-finite value (nan, inf or -inf)

    def note(self, loss: torch.Tensor, i: int) -> torch.Tensor:
        """Record the loss of batch ``i`` (device ops only); returns 1.0 if it is finite else 0.0."""
        v = loss.detach().float().sum()  # the loss may be (1,): a 0-d value, nan/inf preserved
        finite = torch.isfinite(v).float()
        bad = 1 - finite
        self.run = (self.run + 1) * bad
        self.longest = torch.maximum(self.longest, self.run)
        self.count += bad
        self.batch = torch.where(bad > 0, torch.full_like(self.batch, i), self.batch)
        self.last_value = torch.where(bad > 0, v, self.last_value)
        return finite

    def poll(self, stop_requested: bool) -> Verdict:
        """The job's verdict since the last poll (one all-reduce and one read-back); resets the count."""
        flags = torch.stack([self.count, self.longest, self.batch, self.count.new_tensor(float(stop_requested))])
        nonfinite, longest, batch, stop = (int(x) for x in all_reduce_(flags, "max").tolist())
        self.count.zero_()
        self.batch.fill_(-1)
        self.longest.copy_(self.run)  # a run still going on carries over to the next window
        return Verdict(nonfinite, longest, batch, bool(stop))

    def value_text(self) -> str:
        """This process's last non-finite loss as text ('nan', 'inf'), or 'non-finite' if it saw none."""
        v = float(self.last_value)
        return str(v) if v != 0 else "non-finite"
