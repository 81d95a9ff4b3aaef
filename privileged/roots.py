"""Descriptors of the allowed roots, walked and checked once, then reused.

Walking a root from '/' one checked component at a time
(ownership.open_directory) costs more than most calls it serves, and every
call needs it. A root is walked again only when its path no longer leads
to the inode that was checked: nobody but root can make that happen,
because the walk refuses a root whose way from '/' anyone else could
change, and a pinned descriptor cannot be swapped under a call.
"""

import os
import threading

from volsep.privileged import errors
from volsep.privileged import ownership

_lock = threading.Lock()
_checked = {}   # root -> (descriptor, st_dev, st_ino)


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


def _identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def open_root(root):
    """A new O_PATH descriptor of the allowed root ``root``, for the caller
    to close. Each caller gets its own duplicate, so a root walked again by
    another thread can retire the old descriptor at once."""
    now = _identity(root)
    with _lock:
        held = _checked.get(root)
        if held is not None and held[1:] == now:
            return os.dup(held[0])
    fd = _walk(root)
    st = os.fstat(fd)
    with _lock:
        retired = _checked.pop(root, None)
        _checked[root] = (fd, st.st_dev, st.st_ino)
        mine = os.dup(fd)
    if retired is not None:
        os.close(retired[0])
    return mine
