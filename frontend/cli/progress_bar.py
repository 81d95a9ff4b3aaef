"""The tqdm bar of an import or export, with sizes and speed in binary
units."""

import tqdm

_PREFIXES = ('', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi')
FORMAT = ('{desc}: {percentage:3.0f}%|{bar}| {done}/{size} '
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


class BinaryBar(tqdm.tqdm):
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
