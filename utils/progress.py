"""Training progress on standard error: a live bar on a terminal, occasional plain lines elsewhere.

Cluster logs and CI capture standard error to a file, where a carriage-return
progress bar becomes thousands of updates on one line; there a line such as
``iteration 1200/2400 (50%) | rec 0.1234 ... | 4.1 it/s | 4m53s left`` is
printed every ``interval`` seconds instead.
"""
import sys
import time

from tqdm import tqdm


def format_duration(seconds):
    """'1h02m', '4m53s' or '12s' for a non-negative number of seconds."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f'{hours}h{minutes:02d}m'
    return f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


class Progress:
    """Counts iterations ``start + 1 .. total`` and shows them.

    Args:
        start: iterations already done (a resumed run).
        total: the last iteration.
        enabled: False on processes that show nothing (ranks other than 0).
        stream: where to write (standard error).
        interval: seconds between plain lines when ``stream`` is not a terminal.
    """

    def __init__(self, start, total, enabled=True, stream=None, interval=30.0):
        self.stream = sys.stderr if stream is None else stream
        self.start, self.total, self.enabled, self.interval = start, total, enabled, interval
        self.iteration, self.description = start, ''
        self.started_at = time.monotonic()
        self.last_line_at = None
        isatty = getattr(self.stream, 'isatty', None)
        self.bar = None
        if enabled and isatty is not None and isatty():
            self.bar = tqdm(total=total, initial=start, file=self.stream, dynamic_ncols=True, smoothing=0.1)

    @property
    def rate(self):
        """Iterations per second since the start (0 before the first one)."""
        elapsed = time.monotonic() - self.started_at
        done = self.iteration - self.start
        return done / elapsed if done and elapsed > 0 else 0.0

    def update(self, iteration, description=None):
        """Record that ``iteration`` is done; ``description`` (losses) replaces the shown text."""
        if not self.enabled:
            return
        self.iteration = iteration
        if description is not None:
            self.description = description
        if self.bar is not None:
            if description is not None:
                self.bar.set_description(description, refresh=False)
            self.bar.update(iteration - self.bar.n)
            return
        now = time.monotonic()
        # A line for the first iteration (the run is alive), then one per interval and the last.
        due = self.last_line_at is None or now - self.last_line_at >= self.interval or iteration == self.total
        if due and description is not None:
            self.last_line_at = now
            print(self.line(), file=self.stream, flush=True)

    def line(self):
        """The plain progress line for the current state."""
        percent = 100.0 * self.iteration / max(1, self.total)
        parts = [f'iteration {self.iteration}/{self.total} ({percent:.0f}%)']
        if self.description:
            parts.append(self.description)
        rate = self.rate
        if rate > 0:
            parts.append(f'{rate:.2f} it/s')
            parts.append(f'{format_duration((self.total - self.iteration) / rate)} left')
        return ' | '.join(parts)

    def close(self):
        if self.bar is not None:
            self.bar.close()
