"""Policy limits, against a real volsepd.

Size limits: a pool's max_volume_size (the policy file's, or the pool's own
option; the smaller holds) bounds every size an operation sets or grows:
create, import (the raw stream, or the virtual size qemu-img reads from a
non-raw image), resize, clone, revert, snapshot creation. A refused call is
InvalidArgument (UnsafeImage for an image whose virtual size is too big, as
for every image refusal) and leaves the pool exactly as it was.
"""

import json
import os
import struct
import subprocess

import pytest

from tests import service_helpers as sh

MiB = 1 << 20
GiB = 1 << 30
TEST_USER = os.environ.get('VOLSEP_TEST_USER', 'volsep-test')
EVERYONE = ['root', TEST_USER, 'volsep']
LIMITED = {'rules': [{'users': EVERYONE, 'allow': ['*']}],
           'pools': {'default': {'max_volume_size': GiB}}}


@pytest.fixture
def start(rig):
    """Factory: a real volsepd with the given policy file."""
    started = []

    def make(policy):
        started.append(sh.Service(sh.fresh_state_dir(), policy=policy))
        return started[-1].start()
    yield make
    for svc in started:
        if svc.pid is not None:
            svc.stop()
        rig.rmtree(svc.state_dir)


def _refused(svc, *args, error='InvalidArgument', as_root=False):
    rc, out, err = svc.cli(*args, '-f', 'json', as_root=as_root)
    assert rc == 1, (args, rc, out, err)
    reply = json.loads(out)
    assert reply['error'] == error, (args, reply)
    assert err.startswith(f'volsep: {error}: '), err
    return reply['message']


def _add_pool(svc, name, *options):
    argv = ['pool', 'add', name, 'file-reflink', '-o',
            f'dir_path={svc.state_dir}/pools/{name}']
    for option in options:
        argv += ['-o', option]
    return svc.json(*argv)


def _files(rig, directory):
    """Every file's inode and digest (for refusals that create and remove
    a temporary upload, which moves directory timestamps)."""
    return {name: (entry[2], entry[4])
            for name, entry in rig.tree(directory).items() if entry[4]}


# -- size limits -------------------------------------------------------------

def test_resize_beyond_either_limit_is_refused(start, rig):
    svc = start(LIMITED)
    _add_pool(svc, 'capped', f'max_volume_size={GiB}')
    pools = f'{svc.state_dir}/pools'
    for address, pool in (('vm:root', 'default'), ('vm:capped', 'capped')):
        svc.json('volume', 'create', address, '--pool', pool, '--size', '8M')
    before = rig.tree(pools)
    for address in ('vm:root', 'vm:capped'):
        for size in ('100G', '8T', str(GiB + 1)):
            message = _refused(svc, 'volume', 'resize', address, size)
            assert f'exceeds the limit of {GiB} bytes' in message, message
        # the limit binds root as well: it is the pool's, not the caller's
        _refused(svc, 'volume', 'resize', address, '100G', as_root=True)
    assert rig.tree(pools) == before
    assert svc.json('volume', 'info', 'vm:root')['size'] == 8 * MiB
    assert svc.json('volume', 'resize', 'vm:root', '1G')['size'] == GiB
    assert svc.json('volume', 'resize', 'vm:capped', '1G')['size'] == GiB


def test_a_volume_over_a_lowered_limit_may_shrink_but_not_grow(start, rig):
    svc = start(LIMITED)
    _add_pool(svc, 'capped')
    svc.json('volume', 'create', 'vm:root', '--pool', 'capped', '--size',
             '2G')
    svc.json('pool', 'set', 'capped', '-o', f'max_volume_size={GiB}')
    before = rig.tree(f'{svc.state_dir}/pools')
    _refused(svc, 'volume', 'resize', 'vm:root', '3G')
    assert rig.tree(f'{svc.state_dir}/pools') == before
    assert svc.json('volume', 'resize', 'vm:root', '1536M',
                    '--force')['size'] == 1536 * MiB


def test_clone_of_a_big_source_into_a_limited_pool_is_refused(start, rig):
    svc = start(LIMITED)
    _add_pool(svc, 'big')
    _add_pool(svc, 'capped', f'max_volume_size={GiB}')
    svc.json('volume', 'create', 'big:src', '--pool', 'big', '--size', '2G')
    svc.json('volume', 'create', 'big:small', '--pool', 'big', '--size',
             '512M')
    svc.json('volume', 'create', 'vm:dst', '--pool', 'default', '--size',
             '1M')
    svc.json('volume', 'create', 'vm:capped', '--pool', 'capped', '--size',
             '1M')
    before = rig.tree(f'{svc.state_dir}/pools')
    for target in ('vm:dst', 'vm:capped'):
        message = _refused(svc, 'volume', 'clone', 'big:src', target)
        assert f'{2 * GiB} bytes exceeds the limit of {GiB} bytes' in \
            message, message
    assert rig.tree(f'{svc.state_dir}/pools') == before
    assert svc.json('volume', 'info', 'vm:dst')['size'] == MiB
    for target in ('vm:dst', 'vm:capped'):
        assert svc.json('volume', 'clone', 'big:small', target)['size'] == \
            512 * MiB


def _vhd_claiming(path, real, claimed):
    """A VHD qemu-img reads as ``real`` bytes (from the CHS geometry it
    trusts in images made by qemu) whose size field, which
    format_inspector reads, says ``claimed``."""
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'vpc', path, real],
                   check=True)
    with open(path, 'r+b') as f:
        data = bytearray(f.read())
        for offset in (0, len(data) - 512):  # the footer and its copy
            footer = data[offset:offset + 512]
            assert footer[:8] == b'conectix'
            footer[40:48] = struct.pack('>Q', claimed)
            footer[64:68] = bytes(4)
            footer[64:68] = struct.pack('>I', ~sum(footer) & 0xffffffff)
            data[offset:offset + 512] = footer
        f.seek(0)
        f.write(data)
    return path


def test_import_of_a_virtual_size_beyond_the_limit_is_refused(start, rig,
                                                              tmp_path):
    from volsep.privileged import images
    svc = start(LIMITED)
    _add_pool(svc, 'capped', f'max_volume_size={GiB}')
    lying = _vhd_claiming(str(tmp_path / 'lying.vhd'), '4G', MiB)
    # The premise: the header check alone sees 1 MiB, qemu-img 4 GiB.
    with open(lying, 'rb') as f:
        assert images.inspect_fd(f.fileno(), 'vhd', GiB).virtual_size == MiB
    qemu_view = json.loads(subprocess.run(
        ['qemu-img', 'info', '-f', 'vpc', '--output=json', lying],
        check=True, capture_output=True).stdout)
    assert qemu_view['virtual-size'] > 4 * 10 ** 9
    big_qcow2 = str(tmp_path / 'big.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', big_qcow2,
                    '2G'], check=True)
    honest = str(tmp_path / 'honest.vhd')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'vpc', honest, '16M'],
                   check=True)
    for pool in ('default', 'capped'):
        address = f'vm:{pool}'
        svc.json('volume', 'create', address, '--pool', pool, '--size', '1M')
        info = svc.json('volume', 'info', address)
        before = _files(rig, f'{svc.state_dir}/pools/{pool}')
        message = _refused(svc, 'volume', 'import', address, lying,
                           '--format', 'vhd', error='UnsafeImage')
        assert message.startswith('qemu-img reads a virtual size of ') and \
            f'exceeds the limit of {GiB} bytes for {address}' in message, \
            message
        message = _refused(svc, 'volume', 'import', address, big_qcow2,
                           '--format', 'qcow2', error='UnsafeImage')
        assert f'exceeds the limit of {GiB}' in message, message
        assert _files(rig, f'{svc.state_dir}/pools/{pool}') == before
        assert svc.json('volume', 'info', address) == info
        # an image within the limit still imports
        imported = svc.json('volume', 'import', address, honest, '--format',
                            'vhd')
        assert 16 * MiB <= imported['size'] <= GiB


def test_revert_and_snapshot_beyond_a_lowered_limit_are_refused(start, rig):
    svc = start(LIMITED)
    _add_pool(svc, 'capped')
    svc.json('volume', 'create', 'vm:root', '--pool', 'capped', '--size',
             '2G', '--revisions-to-keep', '2')
    svc.json('volume', 'resize', 'vm:root', '1M', '--force')
    assert [r['size'] for r in svc.json('volume', 'revisions',
                                        'vm:root')] == [2 * GiB]
    svc.json('volume', 'create', 'big:root', '--pool', 'capped', '--size',
             '2G')
    svc.json('pool', 'set', 'capped', '-o', f'max_volume_size={GiB}')
    before = rig.tree(f'{svc.state_dir}/pools')
    message = _refused(svc, 'volume', 'revert', 'vm:root')
    assert f'{2 * GiB} bytes exceeds the limit of {GiB}' in message
    message = _refused(svc, 'volume', 'create', 'big:snap', '--pool',
                       'capped', '--kind', 'snapshot', '--source', 'big:root')
    assert f'{2 * GiB} bytes exceeds the limit of {GiB}' in message
    assert rig.tree(f'{svc.state_dir}/pools') == before
    assert svc.json('volume', 'info', 'vm:root')['size'] == MiB
    assert [v['name'] for v in svc.json('volume', 'list', 'big')] == ['root']
