"""Moving bytes between open descriptors inside the kernel.

Regular files: where the pool may share extents (``share``), one FICLONE
for a whole file, else copy_file_range (which shares extents on XFS and
btrfs); or sendfile, over the data segments SEEK_DATA/SEEK_HOLE report,
and past all-zero blocks, so the target stays sparse (the zero check
reads a few bytes of each block, and all of it only where those are
zeros; the copy itself stays in the kernel). Pipes: splice with
SPLICE_F_NONBLOCK and poll(), so a pipe whose other end never moves fails
after ``stall`` seconds instead of holding the thread; the pipe's own
O_NONBLOCK is left alone, since that flag belongs to the caller's open
file.

Progress is visible to the caller through the file offset of a regular
file it handed over: it is moved past each window copied (the copy uses
explicit offsets and never depends on it).
"""

import errno
import fcntl
import os
import select
import time

from volsep.privileged import copying
from volsep.privileged import errors
from volsep.privileged import holes
from volsep.privileged import zeros

WINDOW = 8 << 20
_PROBE = 64
_PIPE_CHUNK = 1 << 20
_F_SETPIPE_SZ = 1031


def _copy_range(src, src_offset, dst, dst_offset, length, share):
    while length:
        if share:
            try:
                n = os.copy_file_range(src, dst, length, src_offset,
                                       dst_offset)
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EINVAL,
                                     errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                share = False
                continue
        else:
            os.lseek(dst, dst_offset, os.SEEK_SET)
            n = os.sendfile(dst, src, src_offset, length)
        if n == 0:
            raise errors.InvalidArgument('the source file shrank during '
                                         'the copy')
        src_offset, dst_offset, length = (src_offset + n, dst_offset + n,
                                          length - n)
    return share


def _segments(fd, start, end):
    for seg_start, seg_end in copying.data_segments(fd, end, start):
        yield max(seg_start, start), seg_end


def _zero_block(fd, offset):
    """is_zero for zeros.runs_by over ``fd`` from ``offset``. Most blocks
    of an image hold data within their first bytes: reading only those
    keeps the check from copying the whole stream into user space, which
    cost more than the copy itself. A block that shrank reads short,
    which is not zeros: the copy then finds the shrink."""
    def is_zero(start, end):
        probe = min(_PROBE, end - start)
        return (os.pread(fd, probe, offset + start) == bytes(probe) and
                os.pread(fd, end - start, offset + start) ==
                bytes(end - start))
    return is_zero


def _write_behind(fd, offset, length):
    # Starts the writeback of what was just copied, so that the caller's
    # fsync finds little left to write instead of the whole stream.
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _whole_file(src, src_start, dst, dst_start, size):
    """Whether the copy is all of ``src`` onto all of ``dst``."""
    return (src_start == dst_start == 0 and
            os.fstat(src).st_size == os.fstat(dst).st_size == size)


def file_to_file(src, src_start, dst, dst_start, size, share,
                 detect_zeros, progress_fd):
    """Copy ``size`` bytes of ``src`` from ``src_start`` to ``dst`` at
    ``dst_start``; ``dst`` must read as zeros there already (holes).
    ``progress_fd`` (``src`` or ``dst``) has its offset moved along."""
    progress_base = src_start if progress_fd == src else dst_start
    if share and _whole_file(src, src_start, dst, dst_start, size) and \
            copying.reflink(src, dst):
        # One FICLONE shares every extent at once and keeps the holes:
        # window by window, a big file cost a thousand calls.
        os.lseek(progress_fd, progress_base + size, os.SEEK_SET)
        return
    for seg_start, seg_end in _segments(src, src_start, src_start + size):
        offset = seg_start
        while offset < seg_end:
            length = min(WINDOW, seg_end - offset)
            runs = [(0, length, False)]
            if detect_zeros:
                runs = zeros.runs_by(length, _zero_block(src, offset))
            for start, end, zero in runs:
                if not zero:
                    share = _copy_range(src, offset + start, dst,
                                        offset + start - src_start +
                                        dst_start, end - start, share)
            if not share:
                _write_behind(dst, offset - src_start + dst_start, length)
            offset += length
            os.lseek(progress_fd, progress_base + offset - src_start,
                     os.SEEK_SET)
    os.lseek(progress_fd, progress_base + size, os.SEEK_SET)


def _wait(fd, events, stall, what):
    poller = select.poll()
    poller.register(fd, events | select.POLLHUP | select.POLLERR)
    if not poller.poll(stall * 1000):
        raise errors.Stalled(f'{what} for {stall:g} s: transfer aborted')


def _splice(src, dst, length, stall, wait_on, events, what, src_offset=None):
    """One splice of up to ``length`` bytes, waiting (at most ``stall``
    seconds at a time) while the pipe end ``wait_on`` is not ready."""
    deadline = time.monotonic() + stall
    while True:
        try:
            return os.splice(src, dst, length, offset_src=src_offset,
                             flags=os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.Stalled(f'{what} for {stall:g} s: transfer '
                              f'aborted') from None
            _wait(wait_on, events, left, what)


def _own_pipe():
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_CHUNK)
    except OSError:
        pass   # the default size only means more, smaller splices
    return r, w


def _read_all(fd, length):
    parts = []
    while length:
        data = os.read(fd, length)
        parts.append(data)
        length -= len(data)
    return b''.join(parts)


def pipe_to_file(src, dst, size, stall):
    """Exactly ``size`` bytes from the pipe ``src`` into ``dst`` from
    offset 0 (zero blocks left as holes), then end of stream: a pipe that
    ends early or has more raises InvalidArgument."""
    # Spliced into a pipe of our own first: its bytes are then read
    # without any chance of blocking, and checked for zeros.
    r, w = _own_pipe()
    try:
        offset = 0
        while offset < size:
            chunk = bytearray()
            while len(chunk) < WINDOW and offset + len(chunk) < size:
                n = _splice(src, w, min(_PIPE_CHUNK, size - offset -
                                        len(chunk)), stall, src,
                            select.POLLIN, 'no data from the pipe')
                if n == 0:
                    break
                chunk += _read_all(r, n)
            if not chunk:
                raise errors.InvalidArgument(
                    f'the pipe ended after {offset} of {size} bytes')
            holes.write(dst, offset, bytes(chunk))
            offset += len(chunk)
        if _splice(src, w, 1, stall, src, select.POLLIN,
                   'the pipe was not closed after its data'):
            raise errors.InvalidArgument(f'the data is longer than {size} '
                                         f'bytes; nothing was imported (give '
                                         f'its exact size)')
    finally:
        os.close(r)
        os.close(w)


def file_to_pipe(src, dst, size, stall):
    """``size`` bytes of ``src`` from offset 0 into the pipe ``dst``
    (holes as zeros: a pipe has no holes)."""
    offset = 0
    while offset < size:
        try:
            n = _splice(src, dst, min(WINDOW, size - offset), stall, dst,
                        select.POLLOUT, 'the reader took nothing',
                        src_offset=offset)
        except BrokenPipeError:
            raise errors.InvalidArgument(
                f'the reader closed the pipe after {offset} of {size} '
                f'bytes') from None
        if n == 0:
            raise errors.PrivilegedError('the image shrank during the export')
        offset += n
