"""Service benchmarks: streams through volsepd, and a 10,000-volume state."""

import os
import signal
import subprocess
import sys
import time

from bench import privileged_calls
from bench import timing
from volsep.frontend import client as client_module
from volsep.frontend import state as state_module

VENV = os.path.dirname(sys.executable)   # the venv bench/run runs
GiB = 1 << 30


def mount():
    return privileged_calls.ROOT.rsplit('/', 1)[0]


def start(state_dir):
    started = time.perf_counter()
    proc = subprocess.Popen([f'{VENV}/volsepd', '--state-dir', state_dir,
                             '--user', 'volsep'], stdout=subprocess.DEVNULL,
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


def streams():
    """1 GiB import and export through the CLI vs dd on the same XFS."""
    state_dir = f'{mount()}/svc-streams'
    source = f'{mount()}/data.raw'
    with open(source, 'wb') as f:
        for _ in range(GiB // (16 << 20)):
            f.write(os.urandom(16 << 20))
    proc, _ = start(state_dir)
    env_socket = ['--socket', f'{state_dir}/volsepd.sock']
    try:
        subprocess.run([f'{VENV}/volsep', *env_socket, 'volume', 'create',
                        'vm:root', '--pool', 'default', '--size', '1G',
                        '--revisions-to-keep', '0'], check=True,
                       stdout=subprocess.DEVNULL)
        dd_in = timed(['dd', f'if={source}', f'of={mount()}/dd.raw',
                        'bs=4M', 'conv=fsync'])
        imp = timed([f'{VENV}/volsep', *env_socket, 'volume', 'import',
                      'vm:root', source])
        dd_out = timed(['dd', f'if={mount()}/dd.raw',
                         f'of={mount()}/dd-out.raw', 'bs=4M'])
        exp = timed([f'{VENV}/volsep', *env_socket, 'volume', 'export',
                      'vm:root', f'{mount()}/exported.raw'])
        mib = GiB / (1 << 20)
        print(f'  dd import-like (fsync)   {mib / dd_in:8.0f} MiB/s '
              f'(baseline)')
        print(f'  volsep volume import     {mib / imp:8.0f} MiB/s   '
              f'ratio {dd_in / imp:4.2f}x of dd')
        print(f'  dd copy                  {mib / dd_out:8.0f} MiB/s '
              f'(baseline)')
        print(f'  volsep volume export     {mib / exp:8.0f} MiB/s   '
              f'ratio {dd_out / exp:4.2f}x of dd')
    finally:
        stop(proc)


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
