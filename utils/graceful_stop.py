"""Stop a training run cleanly on SIGTERM (cluster preemption) or SIGINT (Ctrl-C).

While :class:`GracefulStop` is active, the first signal only records a request: the training loop
sees ``stop.requested`` after its current iteration, the Trainer writes last.pt and the run ends
with a :class:`~utils.errors.RunInterrupted` error that says how to continue. A second signal
while the first is being handled ends the process at once (KeyboardInterrupt), for a user who
does not want to wait for the checkpoint.

Under torchrun every process receives the signal (torchrun forwards it); the processes agree on
the stop through the training loop's all-reduce, so they leave the epoch at the same iteration.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """Context manager: turns SIGTERM/SIGINT into a stop request; restores the old handlers on exit.

    Attributes:
        requested: the name of the first signal received ('SIGTERM', 'SIGINT'), or None.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt  # asked twice: do not wait for the checkpoint
        self.requested = signal.Signals(signum).name

    def request(self, reason: str) -> None:
        """Ask for a stop from code (as a signal would); used by tests and by callers that poll."""
        self.requested = self.requested or reason
