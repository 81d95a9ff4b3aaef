"""Foundation benchmarks: the cost of volsep's privileged layer."""

import fcntl
import os
import uuid

from oslo_config import cfg
from oslo_privsep import priv_context

from bench import noop_context
from bench import timing
from volsep.frontend import privsep_start
from volsep.privileged import copying
from volsep.privileged import files

ROOT = os.environ['VOLSEP_BENCH_ROOT']
MiB = 1 << 20
GiB = 1 << 30
_started = False


def start_daemons():
    global _started
    if not _started:
        privsep_start.start_daemons()
        noop_context.ctx.start(priv_context.Method.FORK)
        _started = True


def noop(calls=5000):
    start_daemons()
    for _ in range(200):  # warm both channels
        files.ping()
        noop_context.noop()
    bare, volsep = timing.interleaved_medians(
        [lambda: noop_context.noop(), lambda: files.ping()], calls)
    timing.report('bare oslo.privsep no-op (baseline)', bare, bare)
    timing.report('volsep ping (validated, audited)', volsep, bare)


def _spread_image(path, size, extents):
    """Sparse image with `extents` separate 64 KiB data extents."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        step = size // extents
        block = os.urandom(64 * 1024)
        for i in range(extents):
            os.pwrite(fd, block, i * step)
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_ficlone(src, directory):
    def run():
        sfd = os.open(src, os.O_RDONLY)
        dfd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        try:
            fcntl.ioctl(dfd, copying.FICLONE, sfd)
        finally:
            os.close(dfd)
            os.close(sfd)
    return run


def _same_sequence_in_process(src, directory):
    """What the entrypoint does, done directly: the privsep-free floor."""
    def run():
        sfd = os.open(src, os.O_RDONLY)
        dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        dfd = os.open('.', os.O_TMPFILE | os.O_RDWR, 0o600, dir_fd=dirfd)
        try:
            fcntl.ioctl(dfd, copying.FICLONE, sfd)
            os.fsync(dfd)
            name = uuid.uuid4().hex
            os.link(f'/proc/self/fd/{dfd}', name, dst_dir_fd=dirfd)
            os.fsync(dirfd)
            os.unlink(name, dir_fd=dirfd)
        finally:
            for fd in (dfd, dirfd, sfd):
                os.close(fd)
    return run


def clone(repeat=30):
    start_daemons()
    cfg.CONF.set_override('thread_pool_size', 2, 'volsep_privileged_files')
    for size, extents in ((1 * GiB, 2000), (8 * GiB, 8000)):
        directory = f'{ROOT}/clone-{size // GiB}g'
        os.mkdir(directory, 0o755)
        src = f'{directory}/src.img'
        _spread_image(src, size, extents)
        print(f'  -- {size // GiB} GiB sparse, {extents} extents')
        names = iter(range(10 ** 6))

        def entry():
            dst = f'{directory}/c{next(names)}.img'
            files.clone(src, dst, 'always')
            os.unlink(dst)
        raw, seq, via = timing.interleaved_medians(
            [raw_ficlone(src, directory),
             _same_sequence_in_process(src, directory), entry],
            repeat, block=5)
        timing.report('raw FICLONE in-process (baseline)', raw, raw, 'ms')
        timing.report('same durable sequence in-process', seq, raw, 'ms')
        timing.report('files.clone through privsep', via, raw, 'ms')
        print(f'  overhead vs raw FICLONE: {(via - raw) * 1e3:.2f} ms; '
              f'vs the same sequence in-process: {(via - seq) * 1e3:.2f} ms')
