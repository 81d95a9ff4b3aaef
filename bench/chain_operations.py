"""Revert and clone of a qcow2 chain volume (issue 15) against the bare
qemu-img commands they need, on the 4-layer chain of bench/chains.py (1 GiB
virtual, 64 MiB of data per layer), each timed until the data is on disk.

revert to the revision two layers down: a new top layer = an overlay on the
revision (`qemu-img create -u`) safely rebased onto the top (`qemu-img
rebase`). clone into a one-layer volume: a new top layer on the target
filled with all of the source chain (`qemu-img create -u` + `qemu-img
convert -n`); also shown against a plain flattening `qemu-img convert`,
the least any full copy costs."""

from bench import chains
from bench import privileged_calls
from volsep.privileged import chain as root_chain


def _directory(record):
    return record[0][0].rsplit('/', 1)[0]


def _overlay(path, below, size=chains.SIZE):
    chains._qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-u', '-b',
                 below[0], '-F', below[1], path, str(size))


def revert():
    privileged_calls.start_daemons()

    def bare(record):
        new = f'{_directory(record)}/L9.qcow2'
        _overlay(new, record[2])
        chains._qemu('qemu-img', 'rebase', '-q', '-f', 'qcow2', '-t',
                     'writeback', '-b', record[0][0], '-F', record[0][1], new)

    def ours(record):
        root_chain.revert(record, 2, f'{_directory(record)}/L9.qcow2')

    bare_s, ours_s = chains._timed([bare, ours])
    print(f'  bare qemu-img create -u + rebase (baseline)    '
          f'{bare_s * 1e3:9.1f} ms')
    chains._line('volsep revert (root call, checked chain)', ours_s, bare_s,
                 'aim >= 0.9x')


def _target(record):
    """A one-layer qcow2 volume beside the source chain."""
    base = f'{_directory(record)}/T1.qcow2'
    chains._qemu('qemu-img', 'create', '-q', '-f', 'qcow2', base,
                 str(chains.SIZE))
    return [[base, 'qcow2']]


def clone():
    privileged_calls.start_daemons()

    def bare(record):
        target = _target(record)
        new = f'{_directory(record)}/T2.qcow2'
        _overlay(new, target[0])
        chains._qemu('qemu-img', 'convert', '-q', '-n', '-t', 'writeback',
                      '-f', 'qcow2', '-O', 'qcow2', record[0][0], new)

    def flatten(record):
        _target(record)
        chains._qemu('qemu-img', 'convert', '-q', '-t', 'writeback', '-f',
                     'qcow2', '-O', 'qcow2', record[0][0],
                     f'{_directory(record)}/T2.qcow2')

    def ours(record):
        target = _target(record)
        root_chain.copy_chain(target, record,
                              f'{_directory(record)}/T2.qcow2')

    bare_s, flat_s, ours_s = chains._timed([bare, flatten, ours])
    print(f'  bare qemu-img create -u + convert -n (baseline) '
          f'{bare_s * 1e3:8.1f} ms')
    chains._line('volsep clone (root call, checked chains)', ours_s, bare_s,
                 'aim >= 0.9x')
    chains._line('  vs a plain flattening convert', ours_s, flat_s,
                 'for scale')
