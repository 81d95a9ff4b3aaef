"""Service benchmarks: streams through volsepd, and a 10,000-volume state."""

import os
import signal
import statistics
import subprocess
import sys
import time

from bench import privileged_calls
from bench import timing
from volsep.frontend import client as client_module
from volsep.frontend import state as state_module

# The venv bench/run installed the checkout into (VOLSEP_VENV), not a fixed
# one: what is measured must be the code being benchmarked.
VENV = os.path.dirname(sys.executable)
GiB = 1 << 30


def mount():
    return privileged_calls.ROOT.rsplit('/', 1)[0]


def start(state_dir, extra_args=()):
    started = time.perf_counter()
    proc = subprocess.Popen([f'{VENV}/volsepd', '--state-dir', state_dir,
                             '--user', 'volsep', *extra_args],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sock_path = f'{state_dir}/volsepd.sock'
    while True:
        try:
            c = client_module.Client(sock_path)
            c.call('admin.pool.List')
            c.close()
            return proc, time.perf_counter() - started
        except (client_module.RemoteError, OSError):
            if proc.poll() is not None:
                raise RuntimeError('volsepd exited during start-up')
            time.sleep(0.01)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def timed(argv):
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _write_source(path, data_every, data_length):
    """1 GiB: random data ``data_length`` long at every ``data_every``
    bytes, zeros (holes) between."""
    with open(path, 'wb') as f:
        for offset in range(0, GiB, data_every):
            f.seek(offset)
            for _ in range(data_length // (16 << 20)):
                f.write(os.urandom(16 << 20))
        f.truncate(GiB)


def streams(repeat=3):
    """1 GiB raw import (dense and mostly zeros) and export through the CLI
    vs dd (bs=4M conv=fsync) between the same kinds of files on the same
    XFS, interleaved; medians of ``repeat`` runs. Local files go to the
    root side as descriptors and are copied in the kernel: in the
    file-reflink pool copy_file_range shares extents (as dd cannot), in
    the file pool sendfile makes real copies, which is dd's work."""
    state_dir = f'{mount()}/svc-streams'
    dense, sparse = f'{mount()}/data.raw', f'{mount()}/sparse.raw'
    _write_source(dense, GiB, GiB)
    _write_source(sparse, 128 << 20, 16 << 20)   # 1/8 data
    proc, _ = start(state_dir)
    cli = [f'{VENV}/volsep', '--socket', f'{state_dir}/volsepd.sock']
    plain_dir = f'{state_dir}/pools/plain'
    try:
        subprocess.run([*cli, 'pool', 'add', 'plain', 'file', '-o',
                        f'dir_path={plain_dir}'], check=True,
                       stdout=subprocess.DEVNULL)
        for address, pool in (('vm:root', 'default'), ('vm:copy', 'plain')):
            subprocess.run([*cli, 'volume', 'create', address, '--pool',
                            pool, '--size', '1G', '--revisions-to-keep',
                            '0'], check=True, stdout=subprocess.DEVNULL)
        runs = {name: [] for name in (
            'dd_in', 'dense', 'sparse', 'plain', 'dd_out', 'export',
            'plain_export')}
        for _ in range(repeat):
            runs['dd_in'].append(timed(['dd', f'if={dense}',
                                        f'of={mount()}/dd.raw', 'bs=4M',
                                        'conv=fsync']))
            runs['dense'].append(timed([*cli, 'volume', 'import', 'vm:root',
                                        dense]))
            runs['plain'].append(timed([*cli, 'volume', 'import', 'vm:copy',
                                        dense]))
            runs['sparse'].append(timed([*cli, 'volume', 'import',
                                         'vm:root', sparse]))
            allocated = os.stat(_volume_path(cli)).st_blocks * 512
            subprocess.run([*cli, 'volume', 'import', 'vm:root', dense],
                           check=True, stdout=subprocess.DEVNULL)
            runs['dd_out'].append(timed(['dd', f'if={mount()}/dd.raw',
                                         f'of={mount()}/dd-out.raw',
                                         'bs=4M', 'conv=fsync']))
            runs['export'].append(timed([*cli, 'volume', 'export',
                                         'vm:root', '--force',
                                         f'{mount()}/exported.raw']))
            runs['plain_export'].append(timed([
                *cli, 'volume', 'export', 'vm:copy', '--force',
                f'{mount()}/exported-copy.raw']))
        t = {name: statistics.median(v) for name, v in runs.items()}
        mib = GiB / (1 << 20)

        def line(label, name, baseline):
            print(f'  {label:32s} {mib / t[name]:8.0f} MiB/s   ratio '
                  f'{t[baseline] / t[name]:5.2f}x of dd')
        print(f'  {"dd bs=4M conv=fsync, import-like":32s} '
              f'{mib / t["dd_in"]:8.0f} MiB/s (baseline)')
        line('import, file-reflink pool', 'dense', 'dd_in')
        line('import, file pool (real copy)', 'plain', 'dd_in')
        line('import, 1/8 data', 'sparse', 'dd_in')
        print(f'  {"":32s} {allocated >> 20} MiB allocated of 1024')
        print(f'  {"dd bs=4M conv=fsync, export-like":32s} '
              f'{mib / t["dd_out"]:8.0f} MiB/s (baseline)')
        line('export, file-reflink pool', 'export', 'dd_out')
        line('export, file pool (real copy)', 'plain_export', 'dd_out')
    finally:
        stop(proc)
        # The space is the next benchmark's (reflink-import needs 20 GiB).
        for name in (dense, sparse, 'dd.raw', 'dd-out.raw', 'exported.raw',
                     'exported-copy.raw'):
            path = name if name.startswith('/') else f'{mount()}/{name}'
            if os.path.exists(path):
                os.unlink(path)
        subprocess.run(['rm', '-rf', state_dir], check=True)


def _write_dense(path, size):
    """``size`` bytes of data (one random 64 MiB piece over and over),
    flushed: its extents are real, as an image's are."""
    piece = os.urandom(64 << 20)
    with open(path, 'wb') as f:
        for _ in range(size // len(piece)):
            f.write(piece)
        os.fsync(f.fileno())


def reflink_import(size=10 * GiB, repeat=7):
    """Goal 5: a raw import of a file on the file-reflink pool's own
    filesystem costs about one FICLONE of it (aim: FICLONE + 5 ms). The
    import goes through the API from this process (the file handed over
    as a descriptor), so no interpreter start-up is counted; it includes
    the durable commit (import target made, flushed, renamed in)."""
    state_dir = f'{mount()}/svc-reflink-import'
    source = f'{mount()}/big.raw'
    _write_dense(source, size)
    proc, _ = start(state_dir)
    try:
        c = client_module.Client(f'{state_dir}/volsepd.sock')
        c.call('admin.vm.volume.Create', volume='vm:big', pool='default',
               size=size, revisions_to_keep=0)
        directory = os.path.dirname(c.call('admin.vm.volume.Info',
                                           volume='vm:big')['path'])

        def through_api():
            with open(source, 'rb') as f:
                c.import_stream('vm:big', f, size, hand_over=True)
        ficlone, imported = timing.interleaved_medians(
            [privileged_calls.raw_ficlone(source, directory), through_api],
            repeat, block=1)
        c.close()
    finally:
        stop(proc)
        os.unlink(source)
    print(f'  -- {size // GiB} GiB of data')
    timing.report('raw FICLONE in-process (baseline)', ficlone, ficlone,
                  'ms')
    timing.report('import through the API', imported, ficlone, 'ms')
    print(f'  import - FICLONE: {(imported - ficlone) * 1e3:.1f} ms '
          f'(aim 5 ms)')


def _volume_path(cli):
    out = subprocess.run([*cli, 'volume', 'info', 'vm:root', 'path', '-f',
                          'value'], check=True, capture_output=True)
    return out.stdout.decode().strip()


def populate(state_dir, count):
    """A state of ``count`` volumes, written directly (the API would
    rewrite the state document once per volume)."""
    pool_dir = f'{state_dir}/pools/default'
    os.makedirs(f'{state_dir}/state', exist_ok=True)
    domains = {}
    for i in range(count):
        domain = f'vm{i // 2}'
        name = f'disk{i % 2}'
        os.makedirs(f'{pool_dir}/{domain}/{name}', exist_ok=True)
        fd = os.open(f'{pool_dir}/{domain}/{name}/c1.img',
                     os.O_CREAT | os.O_WRONLY, 0o600)
        os.ftruncate(fd, 1 << 30)
        os.close(fd)
        domains.setdefault(domain, []).append(
            {'name': name, 'pool': 'default', 'kind': 'persistent',
             'size': 1 << 30, 'rw': True, 'revisions_to_keep': 1,
             'source': None})
    store = state_module.StateStore(f'{state_dir}/state')
    store.load()   # makes its directories
    store.save_pools({'default': ('file-reflink', {'dir_path': pool_dir})},
                     'default')
    for name, volumes in domains.items():
        store.save_domain(name, volumes)
    subprocess.run(['chown', '-R', '%d:%d' % _volsep_ids(),
                    f'{state_dir}/state'], check=True)


def _volsep_ids():
    import pwd
    entry = pwd.getpwnam('volsep')
    return entry.pw_uid, entry.pw_gid


def ten_thousand(count=10000):
    state_dir = f'{mount()}/svc-many'
    os.makedirs(f'{state_dir}/pools', mode=0o755)
    populate(state_dir, count)
    proc, _ = start(state_dir)  # first start writes the root config
    stop(proc)
    proc, restart = start(state_dir)
    try:
        c = client_module.Client(f'{state_dir}/volsepd.sock')
        assert len(c.call('admin.vm.volume.List')) == count
        api = timing.median_seconds(
            lambda: c.call('admin.vm.volume.List'), 5)
        cli = timing.median_seconds(lambda: timed(
            [f'{VENV}/volsep', '--socket', f'{state_dir}/volsepd.sock',
             'volume', 'list', '-f', 'json']), 3)
        print(f'  {count} volumes: restart {restart * 1e3:.0f} ms '
              f'(aim < 2000), list via API {api * 1e3:.0f} ms '
              f'(aim < 100), via CLI {cli * 1e3:.0f} ms (interpreter and '
              f'cliff start-up included)')
    finally:
        stop(proc)
