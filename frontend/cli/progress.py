"""A tqdm progress bar on stderr, only when stderr is a terminal."""

import contextlib
import sys

import tqdm


@contextlib.contextmanager
def bar(total, description):
    if not sys.stderr.isatty():
        yield None
        return
    with tqdm.tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024,
                   desc=description, file=sys.stderr) as progress:
        yield progress.update
