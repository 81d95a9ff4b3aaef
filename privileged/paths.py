"""Resolve caller-supplied paths beneath the allowed roots, never following
symlinks.

Every lookup is a single openat2() with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
relative to an allowed root, so the kernel itself refuses `..` escapes and
symlinks in any component, with no window between check and use. Regular
files are first opened as O_PATH (no side effects, even for a device or FIFO),
checked with fstat, and only then re-opened through /proc/self/fd, which
reaches exactly the inode that was checked.
"""

import contextlib
import ctypes
import errno
import os
import re
import stat

from volsep.privileged import config
from volsep.privileged import errors
from volsep.privileged import roots

_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_MAX_PATH = 4096
# Pool file and directory names: no spaces, control characters or shell
# metacharacters, so every name is also safe to log and to pass to tools.
_COMPONENT = re.compile(r'[A-Za-z0-9_.@+:-]{1,255}')


class _OpenHow(ctypes.Structure):
    _fields_ = [('flags', ctypes.c_uint64), ('mode', ctypes.c_uint64),
                ('resolve', ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _openat2(dir_fd, relpath, flags, mode=0):
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE)
    fd = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(dir_fd),
                       ctypes.c_char_p(os.fsencode(relpath)),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), relpath)
    return fd


def _refusal(path, err):
    if err.errno == errno.ELOOP:
        return errors.PathRefused(f'{path}: a component is a symlink')
    if err.errno == errno.EXDEV:
        return errors.PathRefused(f'{path}: escapes its allowed root')
    if err.errno == errno.ENOENT:
        return errors.NotFound(f'{path}: no such file or directory')
    if err.errno == errno.ENOTDIR:
        return errors.PathRefused(f'{path}: a component is not a directory')
    if err.errno == errno.EEXIST:
        return errors.AlreadyExists(f'{path}: already exists')
    return errors.PrivilegedError(f'{path}: {err.strerror}')


def split_beneath_root(path):
    """Return (root, relative path) for an absolute path below an allowed
    root; relative is '' for the root itself."""
    if type(path) is not str or not path:
        raise errors.PathRefused(f'path must be a non-empty string: {path!r}')
    if '\0' in path or len(path) > _MAX_PATH:
        raise errors.PathRefused(f'path is malformed: {path[:80]!r}')
    if not path.startswith('/'):
        raise errors.PathRefused(f'{path}: not an absolute path')
    parts = path.split('/')[1:]
    if any(part in ('', '.', '..') for part in parts):
        raise errors.PathRefused(
            f'{path}: empty, "." or ".." components are not allowed')
    if not all(_COMPONENT.fullmatch(part) for part in parts):
        raise errors.PathRefused(
            f'{path[:200]!r}: a component has characters outside '
            f'[A-Za-z0-9_.@+:-]')
    for root in config.load().allowed_roots:
        if path == root:
            return root, ''
        if path.startswith(root.rstrip('/') + '/'):
            return root, path[len(root.rstrip('/')) + 1:]
    raise errors.PathRefused(f'{path}: outside the allowed roots')


@contextlib.contextmanager
def _fd(fd):
    try:
        yield fd
    finally:
        os.close(fd)


def _open_path(path, flags, mode=0):
    root, rel = split_beneath_root(path)
    with _fd(roots.open_root(root)) as root_fd:
        if not rel:
            return os.dup(root_fd)
        try:
            return _openat2(root_fd, rel, flags, mode)
        except OSError as err:
            raise _refusal(path, err) from None


@contextlib.contextmanager
def directory(path):
    """An O_PATH descriptor of a directory beneath an allowed root."""
    with _fd(_open_path(path, os.O_PATH | os.O_DIRECTORY)) as fd:
        yield fd


@contextlib.contextmanager
def parent_of(path):
    """(O_PATH descriptor of the parent directory, final name) for a path
    strictly below an allowed root."""
    root, rel = split_beneath_root(path)
    if not rel:
        raise errors.PathRefused(f'{path}: is an allowed root itself')
    parent, name = path.rsplit('/', 1)
    with directory(parent) as fd:
        yield fd, name


def describe(st):
    kind = stat.S_IFMT(st.st_mode)
    return {stat.S_IFLNK: 'a symlink', stat.S_IFCHR: 'a character device',
            stat.S_IFBLK: 'a block device', stat.S_IFIFO: 'a FIFO',
            stat.S_IFSOCK: 'a socket', stat.S_IFDIR: 'a directory'}.get(
                kind, 'not a regular file')


def check_regular(path, st, single_link=True):
    if not stat.S_ISREG(st.st_mode):
        raise errors.PathRefused(f'{path}: is {describe(st)}')
    # Every pool file is made by this daemon: one owned by anybody else
    # was planted (a state directory someone else could write, say).
    if st.st_uid != os.geteuid():
        raise errors.PathRefused(
            f'{path}: owned by uid {st.st_uid}, not by the root side that '
            f'makes every pool file')
    # A second name for the inode may live outside every allowed root (a
    # hard link to a host file); data operations refuse such files.
    if single_link and st.st_nlink != 1:
        raise errors.PathRefused(
            f'{path}: has {st.st_nlink} hard links; refusing to touch data '
            f'that may be shared with a file outside the pool')


def reopen(fd, flags):
    return os.open(f'/proc/self/fd/{fd}', flags | os.O_CLOEXEC)


@contextlib.contextmanager
def regular_file(path, flags, single_link=True):
    """A descriptor of an existing regular file, opened with ``flags``."""
    with _fd(_open_path(path, os.O_PATH | os.O_NOFOLLOW)) as pfd:
        st = os.fstat(pfd)
        check_regular(path, st, single_link)
        with _fd(reopen(pfd, flags)) as fd:
            yield fd, st


@contextlib.contextmanager
def anonymous_file(parent_fd, mode):
    """An unnamed file in a directory (O_TMPFILE): a crash leaves nothing."""
    with _fd(reopen(parent_fd, os.O_RDONLY | os.O_DIRECTORY)) as dfd:
        fd = os.open('.', os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode,
                     dir_fd=dfd)
    with _fd(fd):
        yield fd


def publish(fd, parent_fd, name, path):
    """Give an O_TMPFILE file its name; fails if the name exists."""
    try:
        os.link(f'/proc/self/fd/{fd}', name, dst_dir_fd=parent_fd,
                follow_symlinks=True)
    except FileExistsError:
        raise errors.AlreadyExists(f'{path}: already exists') from None


def fsync_directory(dir_fd):
    with _fd(reopen(dir_fd, os.O_RDONLY | os.O_DIRECTORY)) as fd:
        os.fsync(fd)


def lstat_in(parent_fd, name, path):
    try:
        return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise errors.NotFound(f'{path}: no such file or directory') from None
