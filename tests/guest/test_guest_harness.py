"""The guest harness itself (tests/guest/inside): real device-mapper thin
pools, the root side's configuration, the unprivileged test process, and
the lvm invocation the root side is to use (a fixed --config string and a
three-variable environment) working for every command the lvm_thin driver
needs, /dev nodes included.
"""

import json
import os
import pwd
import stat
import uuid

import pytest

from tests import rig

LVM = dict(item.split('=', 1)
           for item in os.environ['VOLSEP_TEST_LVM'].split())
VG = LVM['vg']
# What the root side passes (tests/guest/README.md says why each is set).
LVM_CONFIG = ('activation{udev_sync=0 udev_rules=0 monitoring=0} '
              'backup{backup=0 archive=0}')
LVM_ENV = {'LC_ALL': 'C', 'PATH': '/usr/sbin:/usr/bin:/sbin:/bin',
           'DM_DISABLE_UDEV': '1'}
MIB = 1024 * 1024


def lvm(subcommand, *args):
    rc, out, err = rig.run(
        ['/sbin/lvm', subcommand, '--config', LVM_CONFIG, *args],
        env=LVM_ENV)
    assert rc == 0, f'lvm {subcommand} {args}: {err.decode()}'
    return out.decode()


def lvs(*names):
    report = json.loads(lvm(
        'lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix',
        '-o', 'vg_name,lv_name,lv_attr,lv_size,pool_lv', *names))
    return {lv['lv_name']: lv for lv in report['report'][0]['lv']}


def device(name):
    return f'/dev/{VG}/{name}'


def is_block_device(path):
    return stat.S_ISBLK(os.stat(path).st_mode)


def test_device_mapper_has_the_thin_targets():
    rc, out, err = rig.run(['dmsetup', 'targets'], env=LVM_ENV)
    assert rc == 0, err
    targets = {line.split()[0] for line in out.decode().splitlines()}
    assert {'thin', 'thin-pool'} <= targets


def test_the_three_thin_pools_exist():
    pools = {name: lv for name, lv in lvs(VG).items()
             if lv['lv_attr'].startswith('t')}
    assert set(pools) == {LVM['thin_pool'], LVM['tiny'], LVM['denied']}
    assert int(pools[LVM['thin_pool']]['lv_size']) == 600 * MIB
    assert int(pools[LVM['tiny']]['lv_size']) == 24 * MIB


def test_the_privileged_config_is_root_owned_and_names_the_pools():
    path = os.environ['VOLSEP_PRIVILEGED_CONFIG']
    st = os.stat(path)
    assert st.st_uid == 0
    assert stat.S_IMODE(st.st_mode) == 0o644
    with open(path) as f:
        lines = dict(line.split(' = ', 1) for line in f.read().splitlines()
                     if ' = ' in line)
    assert lines['allowed_thin_pools'].split(',') == [
        f'{VG}/{LVM["thin_pool"]}', f'{VG}/{LVM["tiny"]}']
    assert lines['lvm_udev'] == 'false'
    state_root = os.environ['VOLSEP_TEST_STATE_ROOT']
    assert state_root in lines['allowed_roots'].split(',')


def test_the_test_process_is_unprivileged():
    user = pwd.getpwnam(os.environ['VOLSEP_TEST_USER'])
    assert os.getuid() == os.geteuid() == user.pw_uid != 0
    pool_dir = os.environ['VOLSEP_TEST_ROOTS'].split('=', 1)[1]
    with pytest.raises(PermissionError):
        open(f'{pool_dir}/not-mine', 'w')
    # Not even reading a thin pool's device, let alone lvm itself.
    with pytest.raises(PermissionError):
        open(f'/dev/mapper/{VG}-{LVM["thin_pool"]}', 'rb')


def test_a_thin_volume_lives_through_every_driver_command():
    name = f't-{uuid.uuid4().hex[:8]}'
    snap, renamed = f'{name}-s', f'{name}-r'
    pool = f'{VG}/{LVM["thin_pool"]}'
    lvm('lvcreate', '-q', '--type', 'thin', '-V', '64m', '--thinpool',
        pool, '-n', name)
    try:
        assert is_block_device(device(name))
        rig.pwrite(device(name), 4 * MIB, b'written before the snapshot')

        lvm('lvcreate', '-q', '--snapshot', '-n', snap, f'{VG}/{name}')
        # A thin snapshot is made inactive, skipped at activation ('k').
        attr = lvs(f'{VG}/{snap}')[snap]['lv_attr']
        assert attr[4] != 'a' and attr[9] == 'k'
        assert not os.path.lexists(device(snap))
        lvm('lvchange', '-ay', '-K', f'{VG}/{snap}')
        assert is_block_device(device(snap))
        assert rig.read(device(snap), 4 * MIB, 27) == \
            b'written before the snapshot'
        assert lvs(f'{VG}/{snap}')[snap]['pool_lv'] == LVM['thin_pool']

        lvm('lvrename', VG, snap, renamed)
        assert not os.path.lexists(device(snap))
        assert is_block_device(device(renamed))

        lvm('lvextend', '-q', '-L', '128m', f'{VG}/{renamed}')
        assert int(lvs(f'{VG}/{renamed}')[renamed]['lv_size']) == 128 * MIB
        lvm('lvreduce', '-q', '-f', '-L', '32m', f'{VG}/{renamed}')
        assert int(lvs(f'{VG}/{renamed}')[renamed]['lv_size']) == 32 * MIB

        lvm('lvremove', '-q', '-y', f'{VG}/{renamed}')
        assert not os.path.lexists(device(renamed))
        assert renamed not in lvs(VG)
    finally:
        lvm('lvremove', '-q', '-y', '--select', f'lv_name=~^{name}', VG)
    assert not os.path.lexists(device(name))
    assert not any(lv.startswith(name) for lv in lvs(VG))
