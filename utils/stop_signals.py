"""SIGTERM/SIGINT as a stop request that a long-running program answers within seconds.

A preemptible scheduler sends SIGTERM some seconds before SIGKILL; Ctrl-C sends
SIGINT. ``StopRequested`` records either. Code that can be abandoned at any
point (start-up, visuals, a final evaluation) runs inside
``stop.interruptible()``, where the signal raises ``Interrupted`` at once;
elsewhere (an optimiser step, a checkpoint being written) the program polls
``stop.signal`` at a safe point, so nothing is left half-updated.
"""
import contextlib
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """Raised inside ``StopRequested.interruptible()`` when a stop signal arrives.

    A BaseException, like KeyboardInterrupt, so ``except Exception`` clauses
    do not swallow it. ``signum`` is the signal; ``detail`` may be filled in by
    the code that handles it (what was saved).
    """

    def __init__(self, signum, detail=''):
        super().__init__(signum)
        self.signum, self.detail = signum, detail


class StopRequested:
    """Context manager: while active, SIGTERM and SIGINT set ``self.signal``.

    The previous handlers come back on exit, so a program (or a test) calling
    the trainer several times keeps its own. Only the main thread may enter it
    (Python delivers signals there).
    """

    def __init__(self):
        self.signal = None
        self._depth = 0
        self._previous = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        if self.signal is None:
            self.signal = signum
        if self._depth > 0:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def interruptible(self):
        """A section a stop signal aborts at once (by raising ``Interrupted``),
        also when the signal arrived just before it."""
        if self.signal is not None:
            raise Interrupted(self.signal)
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
