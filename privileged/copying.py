"""Clone or copy one open file into another.

A "copy" must be independent of its source: os.copy_file_range and
`qemu-img convert -C` share extents on XFS and btrfs (FACTS.md), so the real
copy moves bytes with sendfile, and only over the data segments that
SEEK_DATA/SEEK_HOLE report, which keeps holes.
"""

import errno
import fcntl
import os

from volsep.privileged import errors
from volsep.privileged import validate
from volsep.privileged import zeros

FICLONE = 0x40049409
_NO_REFLINK = (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY,
               errno.ENOSYS)
_CHUNK = 1 << 30


def reflink(src_fd, dst_fd):
    """Share all extents of src with dst; False if the filesystem cannot."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as err:
        if err.errno in _NO_REFLINK:
            return False
        raise
    return True


def data_segments(fd, size, offset=0):
    """(start, end) of each run of data in ``fd`` between ``offset`` and
    ``size``."""
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # only a hole remains
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        offset = end


def nonzero_pieces(fd, size):
    """(offset, bytes) of each run of non-zero bytes in the first
    ``size`` bytes of the file ``fd``, at most validate.MAX_CHUNK long:
    what must be written into storage that already reads as zeros."""
    for start, end in data_segments(fd, size):
        for offset in range(start, end, validate.MAX_CHUNK):
            data = os.pread(fd, min(validate.MAX_CHUNK, end - offset),
                            offset)
            for begin, finish, zero in zeros.runs(data):
                if not zero:
                    yield offset + begin, data[begin:finish]


def sparse_copy(src_fd, dst_fd, size):
    os.ftruncate(dst_fd, size)
    for start, end in data_segments(src_fd, size):
        os.lseek(dst_fd, start, os.SEEK_SET)
        offset = start
        while offset < end:
            sent = os.sendfile(dst_fd, src_fd, offset,
                               min(_CHUNK, end - offset))
            if sent == 0:
                raise errors.PrivilegedError(
                    'source file shrank while it was being copied')
            offset += sent


def clone_or_copy(src_fd, dst_fd, size, mode):
    """Return 'reflink' or 'copy', the method that was used."""
    if mode != 'never':
        if reflink(src_fd, dst_fd):
            return 'reflink'
        if mode == 'always':
            raise errors.CloneUnsupported(
                'the filesystem cannot share extents (FICLONE) and mode is '
                '"always"')
    sparse_copy(src_fd, dst_fd, size)
    return 'copy'
