"""rbd driver benchmarks on the cluster bench/run starts for them: a
snapshot volume's start+stop, and an instant clone, through volsep against
the bare librbd clone and removal they come down to, and raw import/export
through volsep against `rbd import` / `rbd export`."""

import os
import shutil
import subprocess
import tempfile
import time
import uuid

from bench import privileged_calls
from bench import timing
from volsep.frontend import manager as manager_module

MiB = 1 << 20
CEPH = dict(item.split('=', 1)
            for item in os.environ.get('VOLSEP_BENCH_CEPH', '').split())
CHUNK = 4 * MiB


def _manager():
    if not CEPH:
        raise SystemExit('bench: the rbd benchmarks need bench/run to start '
                         'a Ceph cluster (name them: bash bench/run rbd-...)')
    privileged_calls.start_daemons()
    state = tempfile.mkdtemp(prefix='volsep-bench-state-')
    mgr = manager_module.Manager(state)
    mgr.add_pool('ceph', 'rbd', [('ceph_pool', CEPH['pool']),
                                 ('host_id', 'bench'),
                                 ('monitors', CEPH['monitors'])])
    return mgr, state


def _bare_clone_cycle(parent, snap):
    """The librbd calls alone: clone a snapshot, open it, remove it."""
    import rados
    import rbd
    cluster = rados.Rados(conffile=CEPH['conf'], rados_id='admin')
    cluster.connect()
    ioctx = cluster.open_ioctx(CEPH['pool'])

    def cycle():
        name = f'bare-{uuid.uuid4().hex[:8]}'
        rbd.RBD().clone(ioctx, parent, snap, ioctx, name)
        rbd.Image(ioctx, name).close()
        rbd.RBD().remove(ioctx, name)

    def close():
        ioctx.close()
        cluster.shutdown()
    return cycle, close


def snapshot_start(repeat=20):
    """start+stop of a snapshot volume of a 64 MiB source."""
    mgr, state = _manager()
    src, dom = f's{uuid.uuid4().hex[:6]}', f'd{uuid.uuid4().hex[:6]}'
    try:
        mgr.create_volume(f'{src}:root', 'ceph', 64 * MiB)
        mgr.create_volume(f'{dom}:root', 'ceph', kind='snapshot',
                          source=f'{src}:root')

        def through_volsep():
            mgr.start_domain(dom)
            mgr.stop_domain(dom)
        bare, close = _bare_clone_cycle(f'{src}+root+d', 'c1')
        try:
            volsep_s, bare_s = timing.interleaved_medians(
                [through_volsep, bare], repeat, block=5)
        finally:
            close()
        timing.report('bare librbd clone+open+remove', bare_s, bare_s, 'ms')
        timing.report('volsep snapshot start+stop', volsep_s, bare_s, 'ms')
    finally:
        for address in (f'{dom}:root', f'{src}:root'):
            mgr.remove_volume(address)
        shutil.rmtree(state)


def clone(repeat=20):
    """An instant clone of a 256 MiB volume holding 64 MiB of data into a
    persistent volume through volsep (staged clone of the current
    generation, its snapshot, the swap, the replaced image removed)
    against the bare librbd clone+open+remove of the same snapshot."""
    mgr, state = _manager()
    src, dst = f's{uuid.uuid4().hex[:6]}', f'd{uuid.uuid4().hex[:6]}'
    try:
        mgr.create_volume(f'{src}:root', 'ceph', 256 * MiB)
        mgr.create_volume(f'{dst}:root', 'ceph', 256 * MiB)
        mgr.import_begin(f'{src}:root', 256 * MiB)
        for offset in range(0, 64 * MiB, CHUNK):
            mgr.import_write(f'{src}:root', offset, os.urandom(CHUNK))
        mgr.import_end(f'{src}:root')

        def through_volsep():
            mgr.clone(f'{src}:root', f'{dst}:root')
        bare, close = _bare_clone_cycle(f'{src}+root+d', 'c2')
        try:
            volsep_s, bare_s = timing.interleaved_medians(
                [through_volsep, bare], repeat, block=5)
        finally:
            close()
        timing.report('bare librbd clone+open+remove', bare_s, bare_s, 'ms')
        timing.report('volsep volume clone (instant)', volsep_s, bare_s,
                      'ms')
    finally:
        for address in (f'{dst}:root', f'{src}:root'):
            mgr.remove_volume(address)
        shutil.rmtree(state)


def _rbd_cli(*args):
    subprocess.run(['/usr/bin/rbd', '-c', CEPH['conf'], '--id', 'admin',
                    '--no-progress'] + list(args), check=True,
                   capture_output=True)


def transfers(size=256 * MiB):
    """Raw import and export of 256 MiB of data: volsep's streams (the
    manager, as the service drives them) against the rbd CLI."""
    mgr, state = _manager()
    dom = f't{uuid.uuid4().hex[:6]}'
    work = tempfile.mkdtemp(prefix='volsep-bench-rbd-', dir='/var/tmp')
    source = f'{work}/in.raw'
    with open(source, 'wb') as f:
        f.write(os.urandom(size))
    try:
        mgr.create_volume(f'{dom}:root', 'ceph', size)
        start = time.perf_counter()
        mgr.import_begin(f'{dom}:root', size)
        with open(source, 'rb') as f:
            for offset in range(0, size, CHUNK):
                mgr.import_write(f'{dom}:root', offset, f.read(CHUNK))
        mgr.import_end(f'{dom}:root')
        volsep_import = time.perf_counter() - start
        start = time.perf_counter()
        export = mgr.export_begin(f'{dom}:root')
        with open(f'{work}/out.raw', 'wb') as f:
            for offset in range(0, size, CHUNK):
                f.write(mgr.export_read(f'{dom}:root', export['path'],
                                        offset, CHUNK))
        mgr.export_end(f'{dom}:root', export['path'])
        volsep_export = time.perf_counter() - start
        start = time.perf_counter()
        _rbd_cli('import', source, f'{CEPH["pool"]}/bench-{dom}')
        cli_import = time.perf_counter() - start
        start = time.perf_counter()
        _rbd_cli('export', f'{CEPH["pool"]}/bench-{dom}', f'{work}/cli.raw')
        cli_export = time.perf_counter() - start
        _rbd_cli('rm', f'{CEPH["pool"]}/bench-{dom}')
        for label, seconds, base in (
                ('rbd import', cli_import, cli_import),
                ('volsep import (streamed)', volsep_import, cli_import),
                ('rbd export', cli_export, cli_export),
                ('volsep export (streamed)', volsep_export, cli_export)):
            print(f'  {label:<44} {size / MiB / seconds:8.0f} MiB/s   '
                  f'time ratio {seconds / base:5.2f}x')
    finally:
        mgr.remove_volume(f'{dom}:root')
        shutil.rmtree(state)
        shutil.rmtree(work)
