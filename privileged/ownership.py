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

import errno
import os
import stat

_MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


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


def _parts(path):
    return [part for part in path.split('/') if part not in ('', '.')]


def open_directory(path, uid):
    """An O_PATH descriptor of the directory ``path`` (absolute), reached
    one component at a time from '/': each directory is checked as
    check() would (fstat of the descriptor just opened, so nothing can be
    swapped between the check and the use) and a symlink is followed only
    if it belongs to root or ``uid``. check() followed by open() is not
    enough: a path missing at the check passes it, and a symlink that
    appears before the open is then followed. Raises NotPrivate, or
    OSError (FileNotFoundError when a component is missing)."""
    fd = os.open('/', _DIR_FLAGS)
    try:
        parts = _parts(path)
        where = '/'
        _check_directory(where, os.fstat(fd), uid, not parts)
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == '..':
                child = os.open('..', _DIR_FLAGS, dir_fd=fd)
                where = os.path.dirname(where)
            else:
                try:
                    child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW,
                                    dir_fd=fd)
                except OSError as err:
                    if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    name = os.path.join(where, part)
                    if not stat.S_ISLNK(st.st_mode):
                        raise NotPrivate(f'{name} is not a directory')
                    if not _trusted_owner(st, uid):
                        raise NotPrivate(f'{name} is a symlink of uid '
                                         f'{st.st_uid}')
                    hops += 1
                    if hops > _MAX_SYMLINKS:
                        raise NotPrivate(f'{path}: too many symlinks')
                    target = os.readlink(part, dir_fd=fd)
                    if target.startswith('/'):
                        os.close(fd)
                        fd = os.open('/', _DIR_FLAGS)
                        where = '/'
                    parts = _parts(target) + parts
                    continue
                where = os.path.join(where, part)
            os.close(fd)
            fd = child
            _check_directory(where, os.fstat(fd), uid, not parts)
        return fd
    except BaseException:
        os.close(fd)
        raise
