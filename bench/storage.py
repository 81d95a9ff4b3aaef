"""Storage-core benchmarks: a commit cycle and snapshot starts."""

import os
import shutil
import tempfile

from bench import privileged_calls
from bench import timing
from volsep.frontend import manager as manager_module
from volsep.privileged import contexts

MiB = 1 << 20
GiB = 1 << 30


def _manager(name):
    state = tempfile.mkdtemp(prefix='volsep-bench-state-')
    mgr = manager_module.Manager(state)
    mgr.add_pool('p', 'file-reflink',
                 [('dir_path', f'{privileged_calls.ROOT}/{name}')])
    return mgr, state


def _in_process(flag):
    for ctx in contexts.ALL:
        ctx.set_client_mode(not flag)


def _volume_with_data(name):
    """A manager whose vm:root is a 256 MiB persistent volume full of
    data (revisions_to_keep=1)."""
    mgr, state = _manager(name)
    mgr.create_volume('vm:root', 'p', 256 * MiB, revisions_to_keep=1)
    path = mgr.start_domain('vm')[0]['path']
    with open(path, 'r+b') as f:  # 256 MiB of data to share
        f.write(os.urandom(256 * MiB))
    mgr.stop_domain('vm')
    return mgr, state


def in_process_cycle(name):
    """(cycle, cleanup): one start+stop of such a volume done by the
    driver in this process as root, no privsep, no service: the durable
    file operations alone (FICLONE, renames, fsyncs)."""
    mgr, state = _volume_with_data(name)
    volume = mgr._volume(mgr._config('vm:root'))

    def cycle():
        _in_process(True)
        try:
            volume.start()
            volume.stop()
        finally:
            _in_process(False)
    return cycle, lambda: shutil.rmtree(state)


def cycle(repeat=40):
    """start+stop of a 256 MiB persistent volume (revisions_to_keep=1)."""
    privileged_calls.start_daemons()
    mgr, state = _volume_with_data('cycle')
    same_calls_in_process, cleanup = in_process_cycle('cycle-baseline')

    def through_manager():
        mgr.start_domain('vm')
        mgr.stop_domain('vm')
    baseline, measured = timing.interleaved_medians(
        [same_calls_in_process, through_manager], repeat, block=5)
    timing.report('same syscalls in-process as root (baseline)', baseline,
                  baseline, 'ms')
    timing.report('manager + privsep', measured, baseline, 'ms')
    shutil.rmtree(state)
    cleanup()


def snapshot_start(repeat=10):
    """Start of a snapshot volume vs the FICLONE of its source."""
    privileged_calls.start_daemons()
    mgr, state = _manager('snap')
    for size, extents in ((1 * GiB, 2000), (8 * GiB, 8000)):
        base = f'base{size // GiB}'
        mgr.create_volume(f'{base}:root', 'p', size)
        source = mgr.volume_info(f'{base}:root')['path']
        os.unlink(source)
        privileged_calls._spread_image(source, size, extents)
        mgr.create_volume(f'snap{size // GiB}:root', 'p', kind='snapshot',
                          source=f'{base}:root')
        directory = os.path.dirname(source)
        dom = f'snap{size // GiB}'

        def start_stop():
            mgr.start_domain(dom)
            mgr.stop_domain(dom)
        raw, started = timing.interleaved_medians(
            [privileged_calls.raw_ficlone(source, directory), start_stop],
            repeat, block=2)
        print(f'  -- {size // GiB} GiB source, {extents} extents')
        timing.report('raw FICLONE of the source (baseline)', raw, raw, 'ms')
        timing.report('snapshot start+stop via manager', started, raw, 'ms')
    shutil.rmtree(state)
