"""Comparing a recorded backing chain with what the images' headers say,
and rebuilding a record from the headers when that can be trusted.

Both walk one layer at a time with ``read_layer(path, format)`` (the root
side's chain.layer), always reading a layer with the format the layer above
recorded for it; nothing is probed.
"""

from volsep.drivers import errors
from volsep.privileged import errors as root_errors

LAYER_FORMATS = ('raw', 'qcow2')


def _read(read_layer, path, fmt):
    try:
        return read_layer(path, fmt), None
    except root_errors.NotFound:
        return None, f'{path} is missing (moved or renamed?)'
    except root_errors.PrivilegedError as err:
        return None, f'{path} cannot be read as {fmt}: {err}'


def differences(record, read_layer):
    """Every way the images disagree with ``record`` ([[path, format]], top
    first), as readable lines; empty when they agree."""
    found = []
    for index, (path, fmt) in enumerate(record):
        header, problem = _read(read_layer, path, fmt)
        if problem:
            found.append(f'layer {index}: {problem}')
            continue
        expected = record[index + 1] if index + 1 < len(record) else \
            [None, None]
        actual = [header['backing'], header['backing_format']]
        if actual != expected:
            found.append(
                f'layer {index} ({path}): header says backing '
                f'{actual[0]!r} format {actual[1]!r}; record says '
                f'{expected[0]!r} format {expected[1]!r}')
    return found


def walk(top, top_format, read_layer, pool_root):
    """The chain the headers describe from ``top`` down, refusing what
    cannot be trusted: a backing file without a recorded format, one outside
    the pool, a format volsep does not chain, a cycle, or a layer that fails
    the image rules (read_layer raises UnsafeImage)."""
    chain, seen = [], set()
    path, fmt = top, top_format
    while path is not None:
        if path in seen:
            raise errors.ChainMismatch(f'{path} appears twice: the chain '
                                       f'has a cycle')
        seen.add(path)
        header = read_layer(path, fmt)
        chain.append([path, fmt])
        backing, backing_format = header['backing'], header['backing_format']
        if backing is None:
            break
        if backing_format is None:
            raise errors.ChainMismatch(
                f'{path} names backing file {backing!r} without a backing '
                f'format; refusing to guess it')
        if backing_format not in LAYER_FORMATS:
            raise errors.ChainMismatch(
                f'{path}: backing format {backing_format!r} is not one of '
                f'{", ".join(LAYER_FORMATS)}')
        if not backing.startswith(pool_root.rstrip('/') + '/') or \
                '/../' in backing + '/':
            raise errors.ChainMismatch(
                f'{path}: backing file {backing!r} is outside the pool '
                f'{pool_root}')
        path, fmt = backing, backing_format
    return chain
