"""Backing-chain benchmarks on a 4-layer chain: volsep's validation
(header by header through the root side) against `qemu-img info
--backing-chain`, and volsep's offline commit and pull against the bare
qemu-img commands they run (both timed until the data is on disk)."""

import os
import shutil
import statistics
import subprocess
import time
import uuid

from bench import privileged_calls
from volsep.frontend import chains
from volsep.privileged import chain as root_chain

MiB = 1 << 20
SIZE = 1 << 30
LAYERS = 4


def _qemu(*args):
    subprocess.run(args, check=True, capture_output=True)


def _build(directory):
    """raw base, then three qcow2 layers; 64 MiB of data in each layer."""
    os.makedirs(directory)
    record = [[f'{directory}/L1.raw', 'raw']]
    with open(record[0][0], 'wb') as f:
        f.truncate(SIZE)
        f.seek(0)
        f.write(os.urandom(64 * MiB))
    for n in range(2, LAYERS + 1):
        path = f'{directory}/L{n}.qcow2'
        below, fmt = record[0]
        _qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', below, '-F',
              fmt, path, str(SIZE))
        _qemu('qemu-io', '-f', 'qcow2', '-c',
              f'write -P {n} {n * 128 * MiB} {64 * MiB}', path)
        record.insert(0, [path, 'qcow2'])
    return record


def _timed(actions, runs=5):
    """Median seconds of each action, each run on a freshly built and
    synced chain; the actions alternate so that disk state hits all alike."""
    samples = [[] for _ in actions]
    for _ in range(runs):
        for action, into in zip(actions, samples):
            directory = f'{privileged_calls.ROOT}/chain-{uuid.uuid4().hex[:8]}'
            record = _build(directory)
            subprocess.run(['sync'], check=True)
            start = time.perf_counter()
            action(record)
            subprocess.run(['sync'], check=True)
            into.append(time.perf_counter() - start)
            shutil.rmtree(directory)
    return [statistics.median(s) for s in samples]


def _line(label, value, baseline, aim):
    print(f'  {label:<46} {value * 1e3:9.1f} ms   ratio '
          f'{baseline / value:5.2f}x of bare ({aim})')


def validation():
    privileged_calls.start_daemons()
    directory = f'{privileged_calls.ROOT}/chain-validate'
    record = _build(directory)
    for _ in range(5):
        chains.differences(record, root_chain.layer)
    runs = 50
    start = time.perf_counter()
    for _ in range(runs):
        assert not chains.differences(record, root_chain.layer)
    ours = (time.perf_counter() - start) / runs
    start = time.perf_counter()
    for _ in range(runs):
        _qemu('qemu-img', 'info', '--backing-chain', '-U', '--output=json',
              record[0][0])
    bare = (time.perf_counter() - start) / runs
    print(f'  qemu-img info --backing-chain (baseline)       '
          f'{bare * 1e3:9.2f} ms')
    print(f'  volsep chain validation (4 headers, checked)   '
          f'{ours * 1e3:9.2f} ms   {bare / ours:5.2f}x faster (aim > 1x)')
    shutil.rmtree(directory)


def merges():
    privileged_calls.start_daemons()

    def bare_commit(record):
        _qemu('qemu-img', 'commit', '-q', '-f', 'qcow2', '-t', 'writeback',
              '-d', '-b', record[-1][0], record[0][0])

    def bare_pull(record):
        _qemu('qemu-img', 'rebase', '-q', '-f', 'qcow2', '-t', 'writeback',
              '-b', '', record[0][0])

    commit_bare, commit_ours = _timed(
        [bare_commit, lambda r: root_chain.commit(r, 0, LAYERS - 1)])
    pull_bare, pull_ours = _timed(
        [bare_pull, lambda r: root_chain.pull(r, 0, LAYERS)])
    print(f'  bare qemu-img commit top into base (baseline)  '
          f'{commit_bare * 1e3:9.1f} ms')
    _line('volsep chain commit --top 0 --base 3', commit_ours, commit_bare,
          'aim >= 0.9x')
    print(f'  bare qemu-img rebase -b "" (baseline)          '
          f'{pull_bare * 1e3:9.1f} ms')
    _line('volsep chain pull --top 0 (flatten)', pull_ours, pull_bare,
          'aim >= 0.9x')
