"""File entrypoints: each does one thing to files beneath the allowed roots.

New files are built unnamed (O_TMPFILE), fsynced, then given their name with
linkat, so a crash at any instant leaves either no file or the complete one,
and never a temp name to clean up. Every name-changing call fsyncs the
directories it changed before it returns.
"""

import contextlib
import ctypes
import errno
import os
import stat

from volsep.privileged import audit
from volsep.privileged import contexts
from volsep.privileged import copying
from volsep.privileged import errors
from volsep.privileged import holes
from volsep.privileged import inuse
from volsep.privileged import paths
from volsep.privileged import validate

_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _renameat2(src_dir_fd, src_name, dst_dir_fd, dst_name, flags):
    rc = _libc.renameat2(src_dir_fd, os.fsencode(src_name), dst_dir_fd,
                         os.fsencode(dst_name), ctypes.c_uint(flags))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst_name)


def _fsync_dirs(*dir_fds):
    seen = set()
    for fd in dir_fds:
        key = (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        if key not in seen:
            seen.add(key)
            paths.fsync_directory(fd)


def _entry(name, st):
    kind = ('file' if stat.S_ISREG(st.st_mode) else
            'dir' if stat.S_ISDIR(st.st_mode) else
            'symlink' if stat.S_ISLNK(st.st_mode) else 'other')
    return {'name': name, 'type': kind, 'size': st.st_size,
            'allocated': st.st_blocks * 512, 'inode': st.st_ino,
            'nlink': st.st_nlink, 'mode': stat.S_IMODE(st.st_mode),
            'mtime_ns': st.st_mtime_ns}


@contexts.file_ops.entrypoint
@audit.audited
def create(path, size, mode=0o600):
    """Create a sparse file of exactly ``size`` bytes; fail if it exists."""
    validate.size(size)
    validate.file_mode(mode)
    with paths.parent_of(path) as (parent, name):
        with paths.anonymous_file(parent, mode) as fd:
            os.ftruncate(fd, size)
            os.fsync(fd)
            paths.publish(fd, parent, name, path)
        paths.fsync_directory(parent)


@contexts.file_ops.entrypoint
@audit.audited
def clone(src, dst, mode='auto', file_mode=0o600, size=None, durable=True):
    """Make ``dst`` (new) a copy of ``src``: FICLONE, or with ``auto`` or
    ``never`` a hole-preserving byte copy, then optionally set its size.
    ``durable=False`` skips the flushes, for a copy that a crash may lose
    (an export's private snapshot, which start-up deletes anyway).
    Returns 'reflink' or 'copy'."""
    validate.choice(mode, validate.CLONE_MODES, 'mode')
    validate.file_mode(file_mode)
    validate.flag(durable, 'durable')
    if size is not None:
        validate.size(size)
    with paths.regular_file(src, os.O_RDONLY) as (src_fd, st), \
            paths.parent_of(dst) as (parent, name):
        with paths.anonymous_file(parent, file_mode) as fd:
            method = copying.clone_or_copy(src_fd, fd, st.st_size, mode)
            if size is not None:
                os.ftruncate(fd, size)
            if durable:
                os.fsync(fd)
            paths.publish(fd, parent, name, dst)
        if durable:
            paths.fsync_directory(parent)
    return method


@contexts.file_ops.entrypoint
@audit.audited
def truncate(path, size, allow_shrink=False):
    """Set a file's size; shrinking must be asked for explicitly."""
    validate.size(size)
    validate.flag(allow_shrink, 'allow_shrink')
    with paths.regular_file(path, os.O_WRONLY) as (fd, st):
        inuse.claim(fd, path)
        if size < st.st_size and not allow_shrink:
            raise errors.InvalidArgument(
                f'{path}: shrinking from {st.st_size} to {size} bytes '
                f'was not allowed')
        os.ftruncate(fd, size)
        os.fsync(fd)


@contexts.file_ops.entrypoint
@audit.audited_stream
def write_at(path, offset, data):
    """Write one chunk of an import stream into an existing file, within
    its size (imports have an exact size fixed at their start, so the file
    already has its final length). All-zero blocks become holes."""
    validate.size(offset, 'offset')
    if type(data) is not bytes or len(data) > validate.MAX_CHUNK:
        raise errors.InvalidArgument(
            f'data must be bytes of at most {validate.MAX_CHUNK}')
    with paths.regular_file(path, os.O_WRONLY) as (fd, st):
        inuse.claim(fd, path)
        if offset + len(data) > st.st_size:
            raise errors.InvalidArgument(
                f'{path}: writing {len(data)} bytes at {offset} passes its '
                f'size {st.st_size}')
        holes.write(fd, offset, data)
    return len(data)


@contexts.file_ops.entrypoint
@audit.audited_stream
def read_at(path, offset, length):
    """Read one chunk of an export stream."""
    validate.size(offset, 'offset')
    validate.size(length, 'length')
    if length > validate.MAX_CHUNK:
        raise errors.InvalidArgument(f'length must be at most '
                                     f'{validate.MAX_CHUNK}')
    with paths.regular_file(path, os.O_RDONLY) as (fd, _):
        return os.pread(fd, length, offset)


@contexts.file_ops.entrypoint
@audit.audited
def rename(src, dst, noreplace=False):
    """Rename a regular file; with ``noreplace`` fail if ``dst`` exists."""
    validate.flag(noreplace, 'noreplace')
    with paths.parent_of(src) as (src_parent, src_name), \
            paths.parent_of(dst) as (dst_parent, dst_name):
        _rename_in(src_parent, src_name, src, dst_parent, dst_name, dst,
                   noreplace)
        _fsync_dirs(src_parent, dst_parent)


def _rename_in(src_parent, src_name, src, dst_parent, dst_name, dst,
               noreplace):
    paths.check_regular(src, paths.lstat_in(src_parent, src_name, src),
                        single_link=False)
    try:
        existing = os.stat(dst_name, dir_fd=dst_parent,
                           follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if noreplace:
            raise errors.AlreadyExists(f'{dst}: already exists')
        paths.check_regular(dst, existing, single_link=False)
    with inuse.claimed_name(src_parent, src_name, src), \
            inuse.claimed_name(dst_parent, dst_name, dst):
        try:
            _renameat2(src_parent, src_name, dst_parent, dst_name,
                       _RENAME_NOREPLACE if noreplace else 0)
        except OSError as err:
            if err.errno == errno.EEXIST:
                raise errors.AlreadyExists(
                    f'{dst}: already exists') from None
            raise errors.PrivilegedError(
                f'rename {src} -> {dst}: {err.strerror}') from None


# A commit renames two names and removes a few: far below this.
_MAX_ROTATION = 64


def _names_in(directory, names, what):
    """The paths of ``names``, each one name directly in ``directory``."""
    if type(names) not in (list, tuple) or len(names) > _MAX_ROTATION:
        raise errors.InvalidArgument(
            f'{what} must be a list of at most {_MAX_ROTATION} names')
    for name in names:
        if type(name) is not str or '/' in name:
            raise errors.PathRefused(
                f'{what}: {name!r} is not one name in {directory}')
        paths.split_beneath_root(f'{directory}/{name}')
    return [f'{directory}/{name}' for name in names]


@contexts.file_ops.entrypoint
@audit.audited
def rotate(directory, renames, unlinks=()):
    """In one directory, rename regular files (never replacing one) in the
    order given, the directory flushed after each, so each is durable
    before the next change; then remove the files ``unlinks`` names, with
    one flush for them all. ``renames``: [old name, new name] pairs. A
    commit (the new generation named, the old one retired, the oldest
    revisions dropped) is then one call, not one per name. Every name is
    checked before anything changes; a step that fails stops the
    rotation, and the steps before it stay done."""
    if type(renames) not in (list, tuple) or not all(
            type(pair) in (list, tuple) and len(pair) == 2
            for pair in renames):
        raise errors.InvalidArgument('renames must be [old, new] pairs')
    sources = _names_in(directory, [old for old, _ in renames], 'renames')
    targets = _names_in(directory, [new for _, new in renames], 'renames')
    removals = _names_in(directory, unlinks, 'unlinks')
    with paths.directory(directory) as parent:
        for (old, new), src, dst in zip(renames, sources, targets):
            _rename_in(parent, old, src, parent, new, dst, True)
            paths.fsync_directory(parent)
        for name, path in zip(unlinks, removals):
            _unlink_in(parent, name, path)
        if unlinks:
            paths.fsync_directory(parent)


@contexts.file_ops.entrypoint
@audit.audited
def link(src, dst):
    """Give a single-linked regular file a second name (no replace)."""
    with paths.parent_of(src) as (src_parent, src_name), \
            paths.parent_of(dst) as (dst_parent, dst_name):
        paths.check_regular(src, paths.lstat_in(src_parent, src_name, src))
        with inuse.claimed_name(src_parent, src_name, src):
            try:
                os.link(src_name, dst_name, src_dir_fd=src_parent,
                        dst_dir_fd=dst_parent, follow_symlinks=False)
            except FileExistsError:
                raise errors.AlreadyExists(
                    f'{dst}: already exists') from None
        _fsync_dirs(dst_parent)


@contexts.file_ops.entrypoint
@audit.audited
def unlink(path):
    """Remove a regular file's name (links to it elsewhere are untouched)."""
    remove_file(path)


def remove_file(path, held=None):
    """unlink's work, for other root-side modules (not an entrypoint).
    ``held``: the stat of an inode the caller itself holds in use; the
    name is removed only while it still leads to that inode."""
    with paths.parent_of(path) as (parent, name):
        _unlink_in(parent, name, path, held)
        paths.fsync_directory(parent)


def _unlink_in(parent, name, path, held=None):
    st = paths.lstat_in(parent, name, path)
    paths.check_regular(path, st, single_link=False)
    if held is not None:
        if (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino):
            raise errors.InUse(f'{path}: was replaced while in use')
        os.unlink(name, dir_fd=parent)
    else:
        with inuse.claimed_name(parent, name, path):
            os.unlink(name, dir_fd=parent)


@contexts.file_ops.entrypoint
@audit.audited
def fsync(path):
    """Flush a regular file or a directory to stable storage."""
    with paths.parent_of(path) as (parent, name):
        st = paths.lstat_in(parent, name, path)
        if stat.S_ISDIR(st.st_mode):
            with paths.directory(path) as fd:
                paths.fsync_directory(fd)
            return
    with paths.regular_file(path, os.O_RDONLY, single_link=False) as (fd, _):
        os.fsync(fd)


@contexts.file_ops.entrypoint
@audit.audited
def mkdir(path, mode=0o755):
    validate.dir_mode(mode)
    with paths.parent_of(path) as (parent, name):
        try:
            os.mkdir(name, mode, dir_fd=parent)
        except FileExistsError:
            raise errors.AlreadyExists(f'{path}: already exists') from None
        paths.fsync_directory(parent)


@contexts.file_ops.entrypoint
@audit.audited
def rmdir(path):
    """Remove an empty directory."""
    with paths.parent_of(path) as (parent, name):
        st = paths.lstat_in(parent, name, path)
        if not stat.S_ISDIR(st.st_mode):
            raise errors.PathRefused(f'{path}: is {paths.describe(st)}')
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError as err:
            if err.errno == errno.ENOTEMPTY:
                raise errors.InvalidArgument(
                    f'{path}: directory is not empty') from None
            raise
        paths.fsync_directory(parent)


@contexts.file_ops.entrypoint
@audit.audited
def set_aside(path, name):
    """Rename the directory ``path`` to ``name`` in the same parent, never
    replacing anything, and only if every entry in it is a regular file
    that unlink would remove (this daemon's own, not in use by a job);
    otherwise nothing changes. The atomic first step of an all-or-nothing
    removal (the files are unlinked afterwards), and its undo."""
    if type(name) is not str or '/' in name:
        raise errors.InvalidArgument(f'{name!r} is not a directory name')
    target = f'{path.rsplit("/", 1)[0]}/{name}' if type(path) is str \
        else path
    with paths.parent_of(path) as (parent, old), \
            paths.parent_of(target) as (_, new), \
            paths.directory(path) as pfd:
        st = os.fstat(pfd)
        if not stat.S_ISDIR(st.st_mode):
            raise errors.PathRefused(f'{path}: is {paths.describe(st)}')
        fd = paths.reopen(pfd, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with contextlib.ExitStack() as claims:
                for entry in sorted(os.listdir(fd)):
                    entry_path = f'{path}/{entry}'
                    paths.check_regular(
                        entry_path, paths.lstat_in(fd, entry, entry_path),
                        single_link=False)
                    claims.enter_context(
                        inuse.claimed_name(fd, entry, entry_path))
                now = paths.lstat_in(parent, old, path)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise errors.InUse(f'{path}: was replaced while checked')
                try:
                    _renameat2(parent, old, parent, new, _RENAME_NOREPLACE)
                except OSError as err:
                    if err.errno == errno.EEXIST:
                        raise errors.AlreadyExists(
                            f'{target}: already exists') from None
                    raise errors.PrivilegedError(
                        f'rename {path} -> {target}: {err.strerror}') \
                        from None
        finally:
            os.close(fd)
        paths.fsync_directory(parent)


def _entries(fd):
    entries = []
    for name in sorted(os.listdir(fd)):
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # renamed or removed since listdir: not here any more
        entries.append(_entry(name, st))
    return entries


def _walk(fd, prefix, depth, result):
    if depth == 0:
        result[prefix] = tuple(_entries(fd))
        return
    for entry in _entries(fd):
        if entry['type'] != 'dir':
            continue
        try:
            sub = os.open(entry['name'], os.O_RDONLY | os.O_DIRECTORY |
                          os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            continue  # replaced (by a symlink, say) since it was listed
        try:
            _walk(sub, f'{prefix}/{entry["name"]}'.lstrip('/'), depth - 1,
                  result)
        finally:
            os.close(sub)


@contexts.file_ops.entrypoint
@audit.audited
def list_dir(path):
    """Entries of a directory with type, size, allocation and inode; the
    entries are not followed."""
    with paths.directory(path) as pfd:
        fd = paths.reopen(pfd, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return tuple(_entries(fd))
        finally:
            os.close(fd)


@contexts.file_ops.entrypoint
@audit.audited
def list_tree(path, depth):
    """The entries of every directory exactly ``depth`` levels below
    ``path`` (1..3), keyed by relative path; nothing is followed. One call
    instead of one per volume."""
    if type(depth) is not int or not 1 <= depth <= 3:
        raise errors.InvalidArgument('depth must be 1, 2 or 3')
    with paths.directory(path) as pfd:
        fd = paths.reopen(pfd, os.O_RDONLY | os.O_DIRECTORY)
        try:
            result = {}
            _walk(fd, '', depth, result)
            return result
        finally:
            os.close(fd)


@contexts.file_ops.entrypoint
@audit.audited
def stat_path(path):
    """Like one entry of list_dir, for a single path (not followed)."""
    with paths.parent_of(path) as (parent, name):
        return _entry(name, paths.lstat_in(parent, name, path))


@contexts.file_ops.entrypoint
@audit.audited
def filesystem_usage(path):
    """Size and free bytes of the filesystem holding a directory."""
    with paths.directory(path) as pfd:
        fd = paths.reopen(pfd, os.O_RDONLY | os.O_DIRECTORY)
        try:
            vfs = os.fstatvfs(fd)
        finally:
            os.close(fd)
    return {'size': vfs.f_blocks * vfs.f_frsize,
            'free': vfs.f_bavail * vfs.f_frsize}


@contexts.file_ops.entrypoint
@audit.audited
def reflink_supported(path):
    """Whether files in this directory can share extents (probed with two
    unnamed files, so nothing is left behind)."""
    with paths.directory(path) as parent:
        with paths.anonymous_file(parent, 0o600) as src, \
                paths.anonymous_file(parent, 0o600) as dst:
            os.write(src, b'\0' * 4096)
            return copying.reflink(src, dst)


@contexts.file_ops.entrypoint
@audit.audited
def ping():
    """Round trip through the daemon (health checks, benchmarks)."""
    return True
