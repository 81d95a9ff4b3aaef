"""Untrusted-image benchmarks: header inspection against qemu-img info, and
a qcow2 import through volsep against a bare qemu-img convert."""

import os
import statistics
import subprocess

from bench import privileged_calls
from bench import service
from bench import timing
from volsep.privileged import images
from volsep.privileged import qemu

MiB = 1 << 20
GiB = 1 << 30


def image(directory, fmt, qemu_fmt, data_mib):
    """A 1 GiB image holding ``data_mib`` MiB of random data in 16 MiB runs
    spread over the disk, converted by qemu-img itself."""
    raw = f'{directory}/source-{fmt}.raw'
    with open(raw, 'wb') as f:
        f.truncate(GiB)
        runs = data_mib // 16
        for i in range(runs):
            f.seek(i * (GiB // runs))
            f.write(os.urandom(16 * MiB))
    path = f'{directory}/image.{fmt}'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', qemu_fmt, raw,
                    path], check=True)
    os.unlink(raw)
    return path


def inspection():
    privileged_calls.start_daemons()
    directory = f'{privileged_calls.ROOT}/bench-inspect'
    os.makedirs(directory, exist_ok=True)
    for fmt, qemu_fmt in (('qcow2', 'qcow2'), ('vmdk', 'vmdk'),
                          ('vhdx', 'vhdx')):
        path = image(directory, fmt, qemu_fmt, 64)
        fd = os.open(path, os.O_RDONLY)
        try:
            inspect = timing.median_seconds(
                lambda: images.inspect_fd(fd, fmt, 1 << 50), 200)
        finally:
            os.close(fd)
        info = timing.median_seconds(lambda: qemu.info(path, fmt), 30)
        print(f'  {fmt:<6} qemu.info (privsep, checks, qemu-img) '
              f'{info * 1e3:7.2f} ms   header inspection '
              f'{inspect * 1e3:6.3f} ms   inspection is '
              f'{info / inspect:5.0f}x faster (aim >= 20x)')


def _drop_caches():
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')


def qcow2_import(repeat=3):
    """A 1 GiB qcow2 holding 512 MiB through `volsep volume import
    --format qcow2` vs a bare `qemu-img convert` to raw with the same cache
    mode, on the same XFS; medians, interleaved. Cold: the page cache
    dropped before each run, as for an image at rest. Hot: the source just
    read. volsep's upload and private frozen copy are reflinks of the
    caller's file, and a reflinked inode has a page cache of its own, so
    qemu-img reads them from disk even when the source is cached."""
    mount = service.mount()
    source = image(mount, 'qcow2', 'qcow2', 512)
    state_dir = f'{mount}/svc-images'
    proc, _ = service.start(state_dir)
    volsep = [f'{service.VENV}/volsep', '--socket',
              f'{state_dir}/volsepd.sock']
    runs = {key: [] for key in ('bare-cold', 'volsep-cold', 'bare-hot',
                                'volsep-hot')}
    try:
        subprocess.run([*volsep, 'volume', 'create', 'vm:root', '--pool',
                        'default', '--size', '1M', '--revisions-to-keep',
                        '0'], check=True, stdout=subprocess.DEVNULL)
        bare = ['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', '-t',
                'none', source, f'{mount}/bare.raw']
        ours = [*volsep, 'volume', 'import', 'vm:root', source, '--format',
                'qcow2']
        for _ in range(repeat):
            for temperature in ('cold', 'hot'):
                for key, argv in (('bare', bare), ('volsep', ours)):
                    if temperature == 'cold':
                        _drop_caches()
                    else:
                        subprocess.run(['cat', source], check=True,
                                       stdout=subprocess.DEVNULL)
                    runs[f'{key}-{temperature}'].append(service.timed(argv))
                    if key == 'bare':
                        os.unlink(f'{mount}/bare.raw')
    finally:
        service.stop(proc)
    t = {key: statistics.median(v) for key, v in runs.items()}
    for temperature in ('cold', 'hot'):
        bare, ours = t[f'bare-{temperature}'], t[f'volsep-{temperature}']
        print(f'  {temperature} cache: bare qemu-img convert {bare:5.2f} s, '
              f'volsep volume import {ours:5.2f} s   ratio '
              f'{bare / ours:4.2f}x of bare (aim >= 0.8x)')
