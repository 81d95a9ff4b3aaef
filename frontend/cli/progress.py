"""Progress of an import or export on stderr: a tqdm bar with the stream's
total and its speed in binary units, then the commit phase (the service,
or the CLI for an exported file, flushing and renaming after the last
byte) as a status line of its own, so a long flush does not look like a
hang, and does not drag the bar's rate down."""

import contextlib
import sys
import time

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
            # Imported only for a bar that is shown, so that the volume
            # commands without one do not pay for importing tqdm.
            from volsep.frontend.cli import progress_bar
            self._bar = progress_bar.BinaryBar(
                total=total, desc=self.description,
                bar_format=progress_bar.FORMAT, file=sys.stderr)

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
