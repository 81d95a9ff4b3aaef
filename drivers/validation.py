"""Validation of names, sizes and option values on the unprivileged side."""

import re

from volsep.drivers import errors

NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}')
MAX_SIZE_DIGITS = 19
# Mirrors the root side's bound; the root side checks again.
MAX_SIZE = 1 << 50


def name(value, what):
    if type(value) is not str or not NAME.fullmatch(value):
        raise errors.InvalidArgument(
            f'invalid {what} name {value!r}: must match '
            f'[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}')
    return value


def size(value, limit=MAX_SIZE, what='size'):
    """A size in bytes: a whole number 0..limit (no units here)."""
    if type(value) is str:
        if not value.isdigit() or len(value) > MAX_SIZE_DIGITS:
            raise errors.InvalidArgument(
                f'{what} {value[:40]!r} is not a whole number of bytes '
                f'with at most {MAX_SIZE_DIGITS} digits')
        value = int(value)
    if type(value) is not int:
        raise errors.InvalidArgument(f'{what} must be a whole number of '
                                     f'bytes, not {value!r}')
    if value < 0:
        raise errors.InvalidArgument(f'{what} {value} is negative')
    if len(str(value)) > MAX_SIZE_DIGITS or value > limit:
        raise errors.InvalidArgument(f'{what} {value} exceeds the limit of '
                                     f'{limit} bytes')
    return value


_UNITS = {'': 1, 'B': 1,
          'K': 1 << 10, 'KIB': 1 << 10, 'KB': 10 ** 3,
          'M': 1 << 20, 'MIB': 1 << 20, 'MB': 10 ** 6,
          'G': 1 << 30, 'GIB': 1 << 30, 'GB': 10 ** 9,
          'T': 1 << 40, 'TIB': 1 << 40, 'TB': 10 ** 12}
# More digits than any size may have, so that size() names the range
# rather than this pattern calling a long number malformed.
_WITH_UNIT = re.compile(r'([0-9]{1,40})\s*([A-Za-z]*)')


def bytes_from_units(text, what='size'):
    """A size as people type it: '10G' and '10GiB' are binary, '10GB'
    decimal, bare digits bytes; no fractions. The range is size()'s to
    check."""
    match = _WITH_UNIT.fullmatch(text.strip())
    unit = match and match[2].upper()
    if not match or unit not in _UNITS:
        raise errors.InvalidArgument(
            f'invalid {what} {text[:40]!r}: use a whole number with an '
            f'optional unit (K, M, G, T, KiB, MB, ...)')
    return int(match[1]) * _UNITS[unit]


def size_with_units(value, what='size'):
    """size(), also taking a string with a unit: for values people type,
    such as pool options."""
    if type(value) is str:
        value = bytes_from_units(value, what)
    return size(value, what=what)


def revisions_to_keep(value):
    if type(value) is str and re.fullmatch(r'-?[0-9]{1,6}', value):
        value = int(value)
    if type(value) is not int or value < -1 or value > 10 ** 6:
        raise errors.InvalidArgument(
            f'revisions_to_keep must be an integer >= -1, not {value!r}')
    return value


def boolean(value, what):
    if type(value) is bool:
        return value
    if type(value) is str and value.lower() in ('yes', 'true', '1', 'no',
                                               'false', '0'):
        return value.lower() in ('yes', 'true', '1')
    raise errors.InvalidArgument(f'{what} must be yes or no, not {value!r}')
