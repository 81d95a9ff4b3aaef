"""Whether a directory is safe for a service running as a given uid.

A state directory or allowed root that another local user created, or could
write to, lets that user swap the pools, the audit log or the socket under a
root service (or point an allowed root at a host directory). volsepd checks
its state directory with this, and the root side each allowed root it opens.
So the directory and every directory above it must belong to root or to
the user volsepd runs as, and must not be writable by group or others,
except a parent that root owns with the sticky bit (/tmp, /var/tmp), in
which nobody can rename or remove what they do not own. Symlinks on the way
must belong to root or that user too.
"""

import os
import stat


class NotPrivate(Exception):
    pass


def _trusted_owner(st, uid):
    return st.st_uid in (0, uid)


def _check_directory(path, st, uid, is_target):
    if not stat.S_ISDIR(st.st_mode):
        raise NotPrivate(f'{path} is not a directory')
    if not _trusted_owner(st, uid):
        raise NotPrivate(f'{path} belongs to uid {st.st_uid}, not to root '
                         f'or uid {uid}')
    writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not writable_by_others:
        return
    if is_target or not (st.st_mode & stat.S_ISVTX and st.st_uid == 0):
        raise NotPrivate(f'{path} is writable by group or others (mode '
                         f'{stat.S_IMODE(st.st_mode):04o})')


def check(path, uid):
    """Raise NotPrivate unless ``path`` (absolute; it may not exist yet) and
    the directories above it are safe for a service running as ``uid``."""
    lexical = '/'
    for part in path.strip('/').split('/'):
        lexical = os.path.join(lexical, part)
        try:
            st = os.lstat(lexical)
        except FileNotFoundError:
            break
        if stat.S_ISLNK(st.st_mode) and not _trusted_owner(st, uid):
            raise NotPrivate(f'{lexical} is a symlink of uid {st.st_uid}')
    real = os.path.realpath(path)
    current = real
    is_target = True
    while True:
        try:
            st = os.stat(current)
        except FileNotFoundError:
            pass  # to be created by volsepd itself, privately
        else:
            _check_directory(current, st, uid, is_target)
        if current == '/':
            return
        current = os.path.dirname(current)
        is_target = False
