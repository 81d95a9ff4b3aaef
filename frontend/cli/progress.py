"""Progress of an import or export on stderr: a tqdm bar with the stream's
total and its speed in binary units, then the commit phase (the service,
or the CLI for an exported file, flushing and renaming after the last
byte) as a status line of its own, so a long flush does not look like a
hang, and does not drag the bar's rate down."""

import contextlib
import sys
import time

import tqdm

_PREFIXES = ('', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi')
_BAR_FORMAT = ('{desc}: {percentage:3.0f}%|{bar}| {done}/{size} '
               '[{elapsed}<{remaining}, {speed}]')


def binary(count):
    """A byte count with a binary prefix: '512 B', '3.5 MiB', '1.00 GiB'."""
    for prefix in _PREFIXES:
        if abs(count) < 1000 or prefix == _PREFIXES[-1]:
            break
        count /= 1024
    if not prefix:
        return f'{count:.0f} B'
    return f'{count:.2f} {prefix}B' if abs(count) < 10 else \
        f'{count:.1f} {prefix}B'


class _BinaryBar(tqdm.tqdm):
    """tqdm labels a 1024-based count 'MB' and formats the rate in powers
    of 1000 whatever unit_divisor says: sizes and speed are formatted here
    instead, with the prefixes that match."""

    @property
    def format_dict(self):
        fields = super().format_dict
        rate = fields['rate']
        if rate is None and fields['elapsed']:
            rate = fields['n'] / fields['elapsed']
        fields.update(done=binary(fields['n']),
                      size=binary(fields['total'] or 0),
                      speed=f'{binary(rate)}/s' if rate else '? B/s')
        return fields


def shown(requested):
    """Whether to show progress: as asked (--progress / --no-progress),
    else only when stderr is a terminal."""
    return sys.stderr.isatty() if requested is None else requested


class Transfer:
    """One stream's progress. Every method is a no-op when not shown, so
    callers report the same way either way."""

    def __init__(self, description, enabled):
        self.description = description
        self.enabled = enabled
        self._bar = None
        self._commit_started = None

    def start(self, total):
        """The stream's size is known: show the bar."""
        if self.enabled:
            self._bar = _BinaryBar(total=total, desc=self.description,
                                   bar_format=_BAR_FORMAT, file=sys.stderr)

    def advance(self, count):
        if self._bar is not None:
            self._bar.update(count)

    def committing(self):
        """The last byte is through; what follows is the commit."""
        self._close_bar()
        if self.enabled:
            self._commit_started = time.monotonic()
            self._say(f'{self.description}: committing ...', end='')

    def finish(self, failed):
        self._close_bar()
        if self._commit_started is None:
            return
        if failed:
            self._say(' failed')
        else:
            seconds = time.monotonic() - self._commit_started
            self._say(f' done in {seconds:.1f} s')

    def _close_bar(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @staticmethod
    def _say(text, end='\n'):
        print(text, end=end, file=sys.stderr, flush=True)


@contextlib.contextmanager
def transfer(description, requested=None):
    """A Transfer for the duration of one stream (``requested``: the
    --progress option, None when not given)."""
    progress = Transfer(description, shown(requested))
    try:
        yield progress
    except BaseException:
        progress.finish(failed=True)
        raise
    progress.finish(failed=False)
