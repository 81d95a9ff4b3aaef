"""lvm_thin benchmarks, run inside the guest that has real dm-thin
(bench/run boots it through tests/guest/run): a persistent volume's
start+stop through volsep against the bare lvm commands the same cycle
needs, and a clone against a bare `lvcreate -s`, interleaved in one run."""

import configparser
import os
import shutil
import subprocess
import tempfile
import uuid

from bench import privileged_calls
from bench import timing
from volsep.frontend import manager as manager_module

MiB = 1 << 20
LVM = dict(item.split('=', 1)
           for item in os.environ.get('VOLSEP_TEST_LVM', '').split())
ENV = {'LC_ALL': 'C', 'DM_DISABLE_UDEV': '1', 'PATH': '/usr/sbin:/usr/bin'}


def _lvm(*args):
    """lvm as the root side runs it in the guest (its extra settings)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.environ['VOLSEP_PRIVILEGED_CONFIG'])
    extra = parser['privileged'].get('lvm_extra_config', '')
    config = f'activation/udev_sync=0 activation/udev_rules=0 {extra}'.strip()
    subprocess.run(['/sbin/lvm', args[0], '--config', config] +
                   list(args[1:]), env=ENV, check=True, capture_output=True)


def _manager():
    if not LVM:
        raise SystemExit('bench: the lvm_thin benchmarks run in the guest: '
                         'bash bench/run lvm-thin-cycle lvm-thin-clone')
    privileged_calls.start_daemons()
    state = tempfile.mkdtemp(prefix='volsep-bench-state-')
    mgr = manager_module.Manager(state)
    mgr.add_pool('thin', 'lvm_thin', [('volume_group', LVM['vg']),
                                      ('thin_pool', LVM['thin_pool']),
                                      ('revisions_to_keep', '1')])
    return mgr, state


def cycle(repeat=8):
    """start+stop of a 256 MiB persistent volume with one revision kept:
    volsep against snapshot+activate, deactivate, rename, remove of the
    superseded revision, done by hand."""
    mgr, state = _manager()
    vg, pool = LVM['vg'], LVM['thin_pool']
    dom = f'b{uuid.uuid4().hex[:6]}'
    bare = {'gen': 1}
    _lvm('lvcreate', '--type', 'thin', '-V', '256m', '--thinpool', pool,
         '-n', 'bare-1', '-kn', '-an', vg)
    try:
        mgr.create_volume(f'{dom}:root', 'thin', 256 * MiB)

        def through_volsep():
            mgr.start_domain(dom)
            mgr.stop_domain(dom)

        def by_hand():
            gen = bare['gen']
            _lvm('lvcreate', '-s', '-n', 'bare-w', '-ky', '-ay', '-K',
                 f'{vg}/bare-{gen}')
            _lvm('lvchange', '-an', f'{vg}/bare-w')
            _lvm('lvrename', vg, 'bare-w', f'bare-{gen + 1}')
            if gen > 1:
                _lvm('lvremove', '-f', f'{vg}/bare-{gen - 1}')
            bare['gen'] = gen + 1
        volsep_s, bare_s = timing.interleaved_medians(
            [through_volsep, by_hand], repeat, block=2)
        timing.report('bare lvm snapshot/deactivate/rename/remove',
                      bare_s, bare_s, 'ms')
        timing.report('volsep start+stop', volsep_s, bare_s, 'ms')
    finally:
        mgr.remove_volume(f'{dom}:root')
        for gen in (bare['gen'] - 1, bare['gen']):
            if gen >= 1:
                _lvm('lvremove', '-f', f'{vg}/bare-{gen}')
        shutil.rmtree(state)


def clone(repeat=8):
    """A clone of a 256 MiB volume: volsep (thin snapshot, rename, and the
    superseded generation removed) against one bare `lvcreate -s` and its
    removal."""
    mgr, state = _manager()
    vg = LVM['vg']
    src, dst = f's{uuid.uuid4().hex[:6]}', f'c{uuid.uuid4().hex[:6]}'
    try:
        mgr.create_volume(f'{src}:root', 'thin', 256 * MiB)
        mgr.create_volume(f'{dst}:root', 'thin', 256 * MiB)
        origin = mgr.volume_info(f'{src}:root')['path'].split('/')[-1]

        def through_volsep():
            mgr.clone(f'{src}:root', f'{dst}:root')

        def by_hand():
            _lvm('lvcreate', '-s', '-n', 'bare-clone', f'{vg}/{origin}')
            _lvm('lvremove', '-f', f'{vg}/bare-clone')
        volsep_s, bare_s = timing.interleaved_medians(
            [through_volsep, by_hand], repeat, block=2)
        timing.report('bare lvcreate -s (+ lvremove)', bare_s, bare_s, 'ms')
        timing.report('volsep clone', volsep_s, bare_s, 'ms')
    finally:
        for address in (f'{dst}:root', f'{src}:root'):
            mgr.remove_volume(address)
        shutil.rmtree(state)
