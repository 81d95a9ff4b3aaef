"""Entrypoints that copy between a pool file and a caller's descriptor.

The caller's side is a descriptor handed over by token (handover.py),
never a path it names; it is checked (descriptors.py) and used only with
the access it was opened with. The pool side is a path beneath the
allowed roots, as for every other entrypoint. The bytes move in the
kernel (kernel_copy.py). One audit record per transfer.

They run in the long-jobs daemon: a transfer lasts as long as its data,
and must not occupy the threads quick file calls wait for.
"""

import contextlib
import os

from volsep.privileged import audit
from volsep.privileged import contexts
from volsep.privileged import descriptors
from volsep.privileged import errors
from volsep.privileged import handover
from volsep.privileged import inuse
from volsep.privileged import kernel_copy
from volsep.privileged import paths
from volsep.privileged import validate

# A pipe that does not move for this long fails even when the caller asked
# for no stall timeout: a worker is never held forever.
MAX_STALL = 3600


def _stall(value):
    if value is None:
        return MAX_STALL
    if type(value) not in (int, float) or not 0 < value <= MAX_STALL:
        raise errors.InvalidArgument(f'stall_timeout must be a number of '
                                     f'seconds in (0, {MAX_STALL}]')
    return value


def _check_length(st, offset, size):
    """A regular source must hold exactly ``size`` bytes from ``offset``:
    fewer is a short stream, more a long one, and neither changes
    anything."""
    available = st.st_size - offset
    if available < size:
        raise errors.InvalidArgument(
            f'the source ended after {max(available, 0)} of {size} bytes')
    if available > size:
        raise errors.InvalidArgument(f'the data is longer than {size} '
                                     f'bytes; nothing was imported (give '
                                     f'its exact size)')


@contextlib.contextmanager
def _claimed(token, access):
    """(descriptor, its fstat) handed over under ``token``, checked for
    ``access``; closed afterwards whatever happens."""
    fd = handover.claim(token)
    try:
        yield fd, descriptors.check(fd, access)
    finally:
        os.close(fd)


@contexts.long_jobs.entrypoint
@audit.audited
def import_from_descriptor(path, token, size, source_offset=0, share=False,
                           stall_timeout=None):
    """Fill the import target ``path`` (an existing file of exactly
    ``size`` bytes, all holes) with ``size`` bytes read from the handed
    over descriptor, from ``source_offset`` if it is a regular file; zero
    blocks stay holes. ``share``: copy_file_range may share extents."""
    validate.size(size)
    validate.size(source_offset, 'source_offset')
    validate.flag(share, 'share')
    stall = _stall(stall_timeout)
    with _claimed(token, descriptors.READ) as (fd, st), \
            paths.regular_file(path, os.O_WRONLY) as (dst, target):
        inuse.claim(dst, path)
        if target.st_size != size:
            raise errors.InvalidArgument(
                f'{path}: is {target.st_size} bytes, not the {size} of '
                f'the import')
        if descriptors.is_pipe(st):
            kernel_copy.pipe_to_file(fd, dst, size, stall)
        else:
            _check_length(st, source_offset, size)
            kernel_copy.file_to_file(fd, source_offset, dst, 0, size,
                                     share, True, fd)
            # Truncated (and perhaps regrown) during the copy: the
            # copy may have missed data, so it is a short stream.
            _check_length(os.fstat(fd), source_offset, size)
    return size


@contexts.long_jobs.entrypoint
@audit.audited
def export_to_descriptor(path, token, share=False, stall_timeout=None,
                         size=None, hold=True):
    """Write the image ``path`` into the handed over descriptor: a regular
    file becomes exactly the image (sparse), a pipe gets every byte.
    ``size``: the size the image must have (as announced to the reader).
    ``hold``: keep it in use meanwhile (an export snapshot); without, a
    committed image is read from the descriptor opened here while a
    commit may rename or unlink its name. Returns the size."""
    validate.flag(share, 'share')
    validate.flag(hold, 'hold')
    if size is not None:
        validate.size(size)
    stall = _stall(stall_timeout)
    with _claimed(token, descriptors.WRITE) as (fd, st), \
            paths.regular_file(path, os.O_RDONLY) as (src, image):
        if hold:
            inuse.hold(src, path)
        if size is not None and image.st_size != size:
            raise errors.InvalidArgument(
                f'{path}: is {image.st_size} bytes, not {size}')
        size = image.st_size
        if descriptors.is_pipe(st):
            kernel_copy.file_to_pipe(src, fd, size, stall)
        else:
            # Whatever the file held goes: it becomes the image.
            os.ftruncate(fd, 0)
            os.ftruncate(fd, size)
            kernel_copy.file_to_file(src, 0, fd, 0, size, share, False,
                                     fd)
    return size
