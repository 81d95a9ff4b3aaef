"""Sizes with units on the command line; the API takes bytes."""

import re

from volsep.frontend.cli import app

_UNITS = {'': 1, 'B': 1,
          'K': 1 << 10, 'KIB': 1 << 10, 'KB': 10 ** 3,
          'M': 1 << 20, 'MIB': 1 << 20, 'MB': 10 ** 6,
          'G': 1 << 30, 'GIB': 1 << 30, 'GB': 10 ** 9,
          'T': 1 << 40, 'TIB': 1 << 40, 'TB': 10 ** 12}
_SIZE = re.compile(r'([0-9]{1,19})\s*([A-Za-z]*)')


def parse_size(text):
    """'10G' and '10GiB' are binary, '10GB' decimal; no fractions."""
    match = _SIZE.fullmatch(text.strip())
    unit = match and match[2].upper()
    if not match or unit not in _UNITS:
        raise app.OperationError(
            'InvalidArgument', f'invalid size {text[:40]!r}: use a whole '
            f'number with an optional unit (K, M, G, T, KiB, MB, ...)')
    return int(match[1]) * _UNITS[unit]
