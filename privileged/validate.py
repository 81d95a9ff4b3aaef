"""Checks on plain arguments that arrive over the privsep channel."""

from volsep.privileged import errors

# 1 PiB: far beyond any disk image, far below what 64-bit offsets allow, so
# arithmetic on sizes can never overflow a filesystem or qemu-img limit.
MAX_SIZE = 1 << 50
# One privsep message must stay far below the 100 MiB that kills the daemon.
MAX_CHUNK = 8 << 20
FILE_MODES = frozenset({0o600, 0o640, 0o644, 0o660})
DIR_MODES = frozenset({0o700, 0o750, 0o755})
CLONE_MODES = ('always', 'auto', 'never')


def size(value, name='size'):
    # bool is an int subclass; a True size is a caller bug, not 1 byte.
    if type(value) is not int:
        raise errors.InvalidArgument(f'{name} must be an integer, not '
                                     f'{type(value).__name__}')
    if value < 0 or value > MAX_SIZE:
        raise errors.InvalidArgument(
            f'{name} {value} is outside 0..{MAX_SIZE}')
    return value


def file_mode(value):
    if type(value) is not int or value not in FILE_MODES:
        raise errors.InvalidArgument(
            f'file mode {value!r} is not one of '
            f'{", ".join(oct(m) for m in sorted(FILE_MODES))}')
    return value


def dir_mode(value):
    if type(value) is not int or value not in DIR_MODES:
        raise errors.InvalidArgument(
            f'directory mode {value!r} is not one of '
            f'{", ".join(oct(m) for m in sorted(DIR_MODES))}')
    return value


def flag(value, name):
    if type(value) is not bool:
        raise errors.InvalidArgument(f'{name} must be a boolean')
    return value


def choice(value, allowed, name):
    if type(value) is not str or value not in allowed:
        raise errors.InvalidArgument(
            f'{name} must be one of {", ".join(allowed)}, not {value!r}')
    return value
