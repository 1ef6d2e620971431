"""SIGINT and SIGTERM during training: finish the step, save, stop."""
from __future__ import annotations

import signal
import sys

from train import distributed


class StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (save, then exit).

    The first signal is acknowledged at once on stderr; a second one stops at once
    (KeyboardInterrupt), leaving the checkpoints already written.
    """

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if distributed.handles_signals():  # multi-process: SIGTERM is agreed (stop_signal)
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners)
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing this step, saving a "
              "checkpoint, then stopping (send it again to stop at once without saving)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
