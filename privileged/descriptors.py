"""What a descriptor handed over by a caller may be, checked before use.

The descriptor is the caller's capability: the root side uses only the
access it was opened with and never reopens it. It must be a regular file
or a pipe (a socket, directory, device or O_PATH descriptor is refused),
opened for the direction of the transfer, and not on a filesystem whose
reads or writes a user can stall at will (FUSE): a regular file gets no
poll() timeout, so a blocked read there would hold a worker forever.
"""

import ctypes
import fcntl
import os
import stat

from volsep.privileged import errors

READ, WRITE = 'reading', 'writing'
_O_PATH = getattr(os, 'O_PATH', 0o10000000)
_FUSE_MAGIC = 0x65735546
_libc = ctypes.CDLL(None, use_errno=True)


class _StatFs(ctypes.Structure):
    # struct statfs on Linux begins with f_type (a long); the rest is
    # room enough for what follows it.
    _fields_ = [('f_type', ctypes.c_long), ('rest', ctypes.c_byte * 256)]


def _filesystem_type(fd):
    buf = _StatFs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.f_type & 0xffffffff


def _describe(mode):
    for test, name in ((stat.S_ISSOCK, 'a socket'),
                       (stat.S_ISDIR, 'a directory'),
                       (stat.S_ISCHR, 'a character device'),
                       (stat.S_ISBLK, 'a block device'),
                       (stat.S_ISLNK, 'a symlink')):
        if test(mode):
            return name
    return 'not a regular file or pipe'


def check(fd, direction):
    """The stat of ``fd`` if it may be read (READ) or written (WRITE) in a
    transfer; PathRefused or InvalidArgument otherwise."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & _O_PATH:
        raise errors.PathRefused('the descriptor was opened with O_PATH: '
                                 'it gives no access to data')
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise errors.PathRefused(f'the descriptor is {_describe(st.st_mode)}'
                                 f'; only a regular file or a pipe is taken')
    mode = flags & os.O_ACCMODE
    wanted = (os.O_RDONLY, os.O_RDWR) if direction == READ else \
        (os.O_WRONLY, os.O_RDWR)
    if mode not in wanted:
        raise errors.InvalidArgument(f'the descriptor is not open for '
                                     f'{direction}')
    if stat.S_ISREG(st.st_mode):
        if direction == WRITE and flags & os.O_APPEND:
            raise errors.InvalidArgument('the descriptor is open with '
                                         'O_APPEND: an image is written at '
                                         'its offsets')
        if _filesystem_type(fd) == _FUSE_MAGIC:
            raise errors.PathRefused('the file is on a FUSE filesystem, '
                                     'whose reads its owner can stall')
    return st


def is_pipe(st):
    return stat.S_ISFIFO(st.st_mode)
