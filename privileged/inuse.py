"""Marks on the files a root job is using, so nothing changes them under it.

A job (qemu-img info, commit, rebase, convert) holds a shared flock on the
descriptors it checked for as long as it runs; an entrypoint that would
change a file's data or a name leading to it (write_at, truncate, rename,
link, unlink) first takes an exclusive flock on that inode, without
waiting, and refuses with InUse if a job holds it. Both root daemons see
the same marks, because they are the kernel's, and a crashed daemon's
marks vanish with its descriptors. qemu-img's own image locks are OFD
byte-range locks, which flock does not interact with.
"""

import contextlib
import errno
import fcntl
import os
import stat
import time

from volsep.privileged import errors


# Another change holds its claim for a few milliseconds, a job its hold for
# as long as it runs: wait out the one, never the other.
_ATTEMPTS = 20
_PAUSE = 0.005


def _flock(fd, path, operation):
    for _ in range(_ATTEMPTS):
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        time.sleep(_PAUSE)
    raise errors.InUse(f'{path}: in use by a running root job or being '
                       f'changed by another call')


def hold(fd, path):
    """Mark ``fd``'s inode as in use for as long as ``fd`` stays open."""
    _flock(fd, path, fcntl.LOCK_SH)


def claim(fd, path):
    """Take ``fd``'s inode for a change; refused while a job holds it."""
    _flock(fd, path, fcntl.LOCK_EX)


@contextlib.contextmanager
def claimed_name(parent_fd, name, path):
    """While changing the name ``name`` in ``parent_fd``: the regular file
    it leads to (if any) is claimed. Other kinds are left to the caller's
    checks."""
    try:
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=parent_fd)
    except FileNotFoundError:
        yield
        return
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            yield
            return
        fd = os.open(f'/proc/self/fd/{pfd}', os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(pfd)
    try:
        claim(fd, path)
        yield
    finally:
        os.close(fd)
