"""qemu-img entrypoints.

Always an explicit format (never probed), --force-share for reads, the
image handed over as an already-checked descriptor (/dev/fd/N), and the
child confined by confined.run. Before qemu-img reads a non-raw image, the
image rules (images.py) are applied here again, whatever the frontend
already checked. info and create are quick and live in the file context;
convert is a long job with its own context.
"""

import contextlib
import errno
import json
import os
import subprocess

from volsep.privileged import audit
from volsep.privileged import config
from volsep.privileged import confined
from volsep.privileged import contexts
from volsep.privileged import copying
from volsep.privileged import errors
from volsep.privileged import image_formats
from volsep.privileged import images
from volsep.privileged import inuse
from volsep.privileged import paths
from volsep.privileged import validate

QEMU_IMG = '/usr/bin/qemu-img'
OUTPUT_FORMATS = ('raw', 'qcow2')
# SIGKILL (RLIMIT_CPU hard limit) and SIGABRT (allocation failure under
# RLIMIT_AS) are how qemu-img dies when a limit is hit (FACTS.md).
_LIMIT_SIGNALS = (-9, -6, -24)
_LIMIT_MESSAGES = ('Cannot allocate memory', 'Failed to allocate',
                   'out of memory')
_NO_SPACE = 'No space left on device'


def fd_path(fd):
    return f'/dev/fd/{fd}'


def run_img(argv, what, readable=(), writable=()):
    """qemu-img confined to the ``readable`` and ``writable`` descriptors,
    its failures mapped to LimitsExceeded or InvalidImage."""
    conf = config.load()
    try:
        result = confined.run(
            [QEMU_IMG] + argv, cpu_seconds=conf.qemu_img_cpu_seconds,
            address_space=conf.qemu_img_address_space, readable=readable,
            writable=writable, timeout=conf.qemu_img_wall_seconds)
    except subprocess.TimeoutExpired:
        raise errors.LimitsExceeded(
            f'{what}: qemu-img ran longer than '
            f'{conf.qemu_img_wall_seconds} s and was killed') from None
    if result.returncode == 0:
        return result.stdout
    message = result.stderr.strip().splitlines()[-1:] or ['']
    if _NO_SPACE in result.stderr:
        # The pool's filesystem is full: not the image's fault.
        raise errors.NoSpace(f'{what}: no space left on the filesystem '
                             f'({message[0]})')
    if (result.returncode in _LIMIT_SIGNALS or
            any(m in result.stderr for m in _LIMIT_MESSAGES)):
        raise errors.LimitsExceeded(
            f'{what}: qemu-img exceeded its CPU or memory limits '
            f'(exit {result.returncode}) {message[0]}'.rstrip())
    raise errors.InvalidImage(f'{what}: qemu-img failed: {message[0]}')


@contexts.file_ops.entrypoint
@audit.audited
def info(path, fmt):
    """`qemu-img info` of one image with a declared format, as a dict."""
    validate.choice(fmt, image_formats.FORMATS, 'format')
    with paths.regular_file(path, os.O_RDONLY) as (fd, _):
        # info copies no data, so the check runs on the file itself, held
        # in use so that it cannot change, rather than on a frozen copy as
        # convert does.
        inuse.hold(fd, path)
        if fmt != 'raw':
            images.inspect_fd(fd, fmt, validate.MAX_SIZE)
        out = run_img(['info', '-f', images.qemu_name(fmt), '--force-share',
                       '--output=json', fd_path(fd)], path, readable=(fd,))
    try:
        data = json.loads(out)
    except ValueError:
        raise errors.InvalidImage(f'{path}: qemu-img info gave no JSON')
    data['filename'] = path
    return data


def _direct_io_works(fd):
    try:
        os.close(paths.reopen(fd, os.O_WRONLY | os.O_DIRECT))
    except OSError as err:
        if err.errno == errno.EINVAL:
            return False
        raise
    return True


@contexts.file_ops.entrypoint
@audit.audited
def create(path, fmt, size, backing=None, backing_fmt=None, mode=0o600):
    """Create a new image; an overlay names its backing file and format.
    The backing file is not opened (-u), so only its name is trusted here,
    and that name must lie beneath an allowed root."""
    validate.choice(fmt, OUTPUT_FORMATS, 'format')
    validate.size(size)
    validate.file_mode(mode)
    argv = ['create', '-q', '-f', fmt]
    if backing is not None:
        if fmt != 'qcow2':
            raise errors.InvalidArgument('only qcow2 images have backing '
                                         'files')
        validate.choice(backing_fmt, OUTPUT_FORMATS, 'backing format')
        paths.split_beneath_root(backing)
        argv += ['-u', '-b', backing, '-F', backing_fmt]
    with paths.parent_of(path) as (parent, name):
        with paths.anonymous_file(parent, mode) as fd:
            run_img(argv + [fd_path(fd), str(size)], path, writable=(fd,))
            os.fsync(fd)
            paths.publish(fd, parent, name, path)
        paths.fsync_directory(parent)


@contextlib.contextmanager
def frozen_source(src, fmt, parent):
    """A descriptor of ``src`` that nobody else can change: for a non-raw
    image, a private clone (a copy where the filesystem cannot clone) that
    passes the image rules, so what was checked is what qemu-img reads."""
    with paths.regular_file(src, os.O_RDONLY) as (src_fd, st):
        if fmt == 'raw':
            # Never interpreted, only copied: held in use so that a
            # racing write cannot tear the copy.
            inuse.hold(src_fd, src)
            yield src_fd
            return
        with paths.anonymous_file(parent, 0o600) as frozen:
            copying.clone_or_copy(src_fd, frozen, st.st_size, 'auto')
            images.inspect_fd(frozen, fmt, validate.MAX_SIZE)
            yield frozen


@contexts.long_jobs.entrypoint
@audit.audited
def convert(src, src_fmt, dst, dst_fmt, mode=0o600):
    """Convert ``src`` (declared format) into a new image ``dst``."""
    validate.choice(src_fmt, image_formats.FORMATS, 'source format')
    validate.choice(dst_fmt, OUTPUT_FORMATS, 'target format')
    validate.file_mode(mode)
    with paths.parent_of(dst) as (parent, name), \
            frozen_source(src, src_fmt, parent) as src_fd:
        with paths.anonymous_file(parent, mode) as fd:
            cache = 'none' if _direct_io_works(fd) else 'writeback'
            run_img(['convert', '-q', '-f', images.qemu_name(src_fmt),
                     '-O', dst_fmt, '-t', cache, fd_path(src_fd),
                     fd_path(fd)], src, readable=(src_fd,), writable=(fd,))
            os.fsync(fd)
            paths.publish(fd, parent, name, dst)
        paths.fsync_directory(parent)
