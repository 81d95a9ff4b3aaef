"""Hot-path benchmarks (issue 12): start+stop through the API against the
same durable file operations in-process, with and without 10,000 other
volumes registered; and 100 domains started by 100 concurrent clients
against one after another."""

import concurrent.futures
import os
import threading
import time

from bench import privileged_calls
from bench import service
from bench import storage
from bench import timing
from volsep.frontend import client as client_module

MiB = 1 << 20


def _client(state_dir):
    return client_module.Client(f'{state_dir}/volsepd.sock')


def _service_with_volume(name, others):
    """A running volsepd with ``others`` volumes registered and a 256 MiB
    persistent vm:root holding data; returns (process, client)."""
    state_dir = f'{service.mount()}/{name}'
    os.makedirs(f'{state_dir}/pools', mode=0o755)
    if others:
        service.populate(state_dir, others)
    proc, _ = service.start(state_dir)
    c = _client(state_dir)
    try:
        c.call('admin.vm.volume.Create', volume='vm:root', pool='default',
               size=256 * MiB, revisions_to_keep=1)
        path = c.call('admin.vm.Start', domain='vm')[0]['path']
        with open(path, 'r+b') as f:
            f.write(os.urandom(256 * MiB))
        c.call('admin.vm.Stop', domain='vm')
    except BaseException:
        service.stop(proc)
        raise
    return proc, c


def api_cycle(repeat=100):
    """Goal 1: a start+stop cycle through the socket API, at most 1.2x the
    in-process baseline, and with 10,000 other volumes at most 1.1x the
    cycle with none."""
    privileged_calls.start_daemons()
    baseline_cycle, cleanup = storage.in_process_cycle('hot-baseline')
    empty, empty_client = _service_with_volume('svc-cycle-0', 0)
    full, full_client = _service_with_volume('svc-cycle-10k', 10000)

    def cycle(c):
        def run():
            c.call('admin.vm.Start', domain='vm')
            c.call('admin.vm.Stop', domain='vm')
        return run
    try:
        baseline, alone, crowded = timing.interleaved_medians(
            [baseline_cycle, cycle(empty_client), cycle(full_client)],
            repeat, block=5)
    finally:
        for proc in (empty, full):
            service.stop(proc)
        cleanup()
    timing.report('same file operations in-process (baseline)', baseline,
                  baseline, 'ms')
    timing.report('API start+stop, no other volume (aim 1.2x)', alone,
                  baseline, 'ms')
    timing.report('API start+stop, 10,000 others (aim 1.1x of '
                  'none)', crowded, baseline, 'ms')
    print(f'  10,000 others / none: {crowded / alone:.2f}x')


def _start_all(state_dir, domains, workers):
    """Wall seconds for starting every domain, ``workers`` clients at a
    time (each with its own connection), then the same for stopping."""
    clients = [_client(state_dir) for _ in range(workers)]
    spread = [domains[i::workers] for i in range(workers)]

    def run(method):
        barrier = threading.Barrier(workers + 1)

        def worker(c, mine):
            barrier.wait()
            for domain in mine:
                c.call(method, domain=domain)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(worker, c, mine)
                       for c, mine in zip(clients, spread)]
            barrier.wait()
            started = time.perf_counter()
            for future in futures:
                future.result()
            return time.perf_counter() - started
    try:
        return run('admin.vm.Start'), run('admin.vm.Stop')
    finally:
        for c in clients:
            c.close()


def concurrent_starts(domains=100, volumes=3, rounds=3):
    """Goal 2: 100 domains x 3 volumes started by 100 concurrent clients
    at least 2x faster than one after another."""
    state_dir = f'{service.mount()}/svc-concurrent'
    os.makedirs(f'{state_dir}/pools', mode=0o755)
    # One client per domain, all of one uid: above the default per-uid
    # connection limit.
    proc, _ = service.start(state_dir, ['--max-connections-per-uid',
                                        str(domains + 8)])
    names = [f'vm{i}' for i in range(domains)]
    try:
        c = _client(state_dir)
        for name in names:
            for v in range(volumes):
                c.call('admin.vm.volume.Create', volume=f'{name}:disk{v}',
                       pool='default', size=64 * MiB, revisions_to_keep=1)
        c.close()
        serial, parallel = [], []
        for _ in range(rounds):   # interleaved against load drift
            serial.append(_start_all(state_dir, names, 1))
            parallel.append(_start_all(state_dir, names, domains))
    finally:
        service.stop(proc)
    for what, index in (('start', 0), ('stop', 1)):
        one = min(s[index] for s in serial)
        many = min(p[index] for p in parallel)
        print(f'  {domains} domains x {volumes} volumes, {what}: one after '
              f'another {one * 1e3:7.0f} ms, {domains} clients at once '
              f'{many * 1e3:7.0f} ms   speed-up {one / many:4.2f}x (aim 2x)')
