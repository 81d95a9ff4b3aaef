"""Sizes on the command line: typed with units, shown in bytes or, on
request (--human), as people read them."""

from volsep.drivers import errors
from volsep.drivers import validation
from volsep.frontend.cli import app

# Output columns that hold a size in bytes.
SIZE_COLUMNS = frozenset({'size', 'usage', 'max_volume_size'})
_BINARY = ('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB')


def parse_size(text):
    """'10G' and '10GiB' are binary, '10GB' decimal; no fractions. A
    malformed size is a usage error; its range is volsepd's to check."""
    try:
        return validation.bytes_from_units(text)
    except errors.InvalidArgument as err:
        raise app.UsageError(str(err)) from None


def readable(value):
    """Bytes as '1.5 GiB' (one decimal, dropped when it is 0); anything
    that is not a number of bytes is left as it is."""
    if type(value) is str and value.isdigit():
        value = int(value)
    if type(value) is not int:
        return value
    amount, unit = float(value), _BINARY[0]
    for unit in _BINARY:
        if amount < 1024 or unit == _BINARY[-1]:
            break
        amount /= 1024
    text = f'{amount:.1f}'.removesuffix('.0')
    return f'{text} {unit}'


def readable_row(columns, row):
    return tuple(readable(value) if column in SIZE_COLUMNS else value
                 for column, value in zip(columns, row))
