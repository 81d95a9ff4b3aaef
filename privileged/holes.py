"""Writing a buffer into a file with its all-zero blocks left as holes.

An import of a mostly empty disk then takes the space of its data, not of
its size, as a sparse copy does. The result reads back exactly as a plain
pwrite would have left it: a zero run over a range that already holds
data (a chunk written twice) has that range punched out, so skipping a
write never leaves old bytes behind.
"""

import ctypes
import errno
import os

from volsep.privileged import zeros

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                            ctypes.c_int64)


def _holds_data(fd, start, end):
    try:
        return os.lseek(fd, start, os.SEEK_DATA) < end
    except OSError as err:
        if err.errno == errno.ENXIO:  # nothing but a hole from start on
            return False
        raise


def _punch(fd, start, end):
    """False if the filesystem cannot punch holes."""
    rc = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                         start, end - start)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))


def _pwrite_all(fd, view, offset):
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def write(fd, offset, data):
    """Put ``data`` (bytes) at ``offset`` in the open file ``fd``, which must
    already extend past it (the caller checks): zero runs become holes."""
    view = memoryview(data)
    for start, end, zero in zeros.runs(data):
        where = offset + start
        if zero:
            if not _holds_data(fd, where, offset + end):
                continue  # already reads as zeros, nothing allocated
            if _punch(fd, where, offset + end):
                continue
        _pwrite_all(fd, view[start:end], where)
