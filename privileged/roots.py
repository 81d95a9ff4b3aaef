"""Descriptors of the allowed roots, walked and checked once, then reused.

Walking a root from '/' one checked component at a time
(ownership.open_directory) costs more than most calls it serves, and every
call needs it. The walk's descriptor is reused while the way it found
still leads, without following any symlink, to the inode it checked (and
the configured path, where it has root's own symlinks, too): only root can
keep that way in place or change it, because the walk refuses a root whose
way from '/' anyone else could change, and a pinned descriptor cannot be
swapped under a call.

Comparing what os.stat(root) finds is not enough: it follows every symlink
on the way, also one that a user made where the root's name is free in a
sticky directory (the walk allows a root below /var/tmp), and so leads back
to a directory root has moved away from the configured path.
"""

import collections
import ctypes
import os
import threading

from volsep.privileged import errors
from volsep.privileged import ownership

_SYS_OPENAT2 = 437
_AT_FDCWD = -100
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC

_lock = threading.Lock()
_Held = collections.namedtuple('_Held', 'fd dev ino route')
_checked = {}   # root -> _Held


class _OpenHow(ctypes.Structure):
    _fields_ = [('flags', ctypes.c_uint64), ('mode', ctypes.c_uint64),
                ('resolve', ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _walk(root):
    # Component by component, each checked as it is opened: checking the
    # path and then opening it would follow a symlink made in between (a
    # root missing from a sticky /var/tmp passes the check).
    try:
        return ownership.open_directory(root, os.geteuid())
    except ownership.NotPrivate as err:
        raise errors.ConfigurationError(
            f'allowed root {root} is not safe to use: {err}') from None
    except OSError as err:
        raise errors.ConfigurationError(
            f'allowed root {root} cannot be opened: {err.strerror}')


def _stat_identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _route_identity(route):
    """(dev, ino) of the directory at the absolute ``route``, reached
    without following any symlink; None if there is none."""
    how = _OpenHow(_FLAGS, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(_AT_FDCWD),
                       ctypes.c_char_p(os.fsencode(route)),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        return None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


def _still_there(root, held):
    ident = (held.dev, held.ino)
    if _route_identity(held.route) != ident:
        return False
    # Where the configured path has root's symlinks, root may point them
    # elsewhere: then the root is where they lead now.
    return held.route == root or _stat_identity(root) == ident


def open_root(root):
    """A new O_PATH descriptor of the allowed root ``root``, for the caller
    to close. Each caller gets its own duplicate, so a root walked again by
    another thread can retire the old descriptor at once."""
    with _lock:
        held = _checked.get(root)
    if held is not None and _still_there(root, held):
        with _lock:
            if _checked.get(root) is held:   # not retired meanwhile
                return os.dup(held.fd)
    fd = _walk(root)
    retired = None
    try:
        st = os.fstat(fd)
        # The way the walk found, symlinks resolved: checked just now.
        route = os.readlink(f'/proc/self/fd/{fd}')
        with _lock:
            retired = _checked.pop(root, None)
            _checked[root] = _Held(fd, st.st_dev, st.st_ino, route)
            fd = None   # the cache's now
            return os.dup(_checked[root].fd)
    finally:
        if fd is not None:
            os.close(fd)
        if retired is not None:
            os.close(retired.fd)
