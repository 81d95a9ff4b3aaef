"""One service per state directory, pools that own their directories, and
removals that happen entirely or not at all (issue 11, items 4, 5 and 7).

Each test runs a real volsepd (started as root, frontend as 'volsep') and
plants its hostile or stray files with the root rig."""

import signal
import time

import pytest

from tests import service_helpers as sh
from tests.test_service import EVERYONE
from tests.test_service import service  # noqa: F401

MiB = 1 << 20


def _exit_status(rig, pid, seconds=60):
    """A spawned process's exit status once it ends by itself, or None if
    it is still running after ``seconds`` (it is then stopped)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = sh.status_of(pid)['State']
        except FileNotFoundError:
            break
        if state.startswith('Z'):
            break
        time.sleep(0.1)
    else:
        rig.kill(pid, signal.SIGTERM)
        rig.wait(pid, 30)
        return None
    return rig.wait(pid, 10)


def _pool_dir(svc, name='default'):
    return f'{svc.state_dir}/pools/{name}'


def _volumes(svc):
    return {(v['domain'], v['name']): v['size']
            for v in svc.json('volume', 'list')}


# -- item 4: one volsepd per state directory ---------------------------------

def test_second_volsepd_on_the_same_state_dir_refuses(service, rig):
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '4M')
    state_before = rig.tree(f'{service.state_dir}/state')
    other_socket = f'{service.state_dir}/second.sock'
    log = f'{service.state_dir}.second.log'
    pid = rig.spawn([f'{sh.VENV}/volsepd', '--state-dir', service.state_dir,
                     '--user', sh.SERVICE_USER, '--socket', other_socket,
                     '--policy-file', service.policy_path],
                    {'PATH': '/usr/bin:/bin'}, log)
    status = _exit_status(rig, pid)
    output = rig.read(log).decode(errors='replace')
    assert status not in (None, 0), f'a second volsepd ran: {output}'
    assert 'in use by another volsepd' in output, output
    assert f'pid {service.pid}' in output, output
    assert 'Traceback' not in output, output
    # It wrote nothing: no socket, the first one's state as it was.
    assert 'second.sock' not in rig.tree(service.state_dir)
    assert rig.tree(f'{service.state_dir}/state') == state_before
    # The first keeps serving, and its state survives a restart.
    service.json('volume', 'create', 'vm:data', '--pool', 'default',
                 '--size', '2M')
    service.stop()
    service.start()
    assert _volumes(service) == {('vm', 'root'): 4 * MiB,
                                 ('vm', 'data'): 2 * MiB}
    # Once the first has stopped, the lock is free for the next one.
    service.stop()
    service.start()
    assert ('vm', 'root') in _volumes(service)


def test_orphans_are_reported_at_start_listed_and_removed(service, rig):
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '4M')
    service.stop()
    pool = _pool_dir(service)
    rig.write(f'{pool}/stray.img', b'x' * 4096)
    rig.mkdir(f'{pool}/ghost/disk')
    rig.write(f'{pool}/ghost/disk/c1.img', b'\0' * 8192)
    rig.mkdir(f'{pool}/vm/old')
    rig.write(f'{pool}/vm/old/c3.img', b'')
    rig.write(f'{pool}/vm/root/notes.txt', b'not a volsep name\n')
    rig.mkfifo(f'{pool}/vm/root/pipe')
    service.start()

    out = service.output()
    expected = {('ghost', 'dir'), ('stray.img', 'file'), ('vm/old', 'dir'),
                ('vm/root/notes.txt', 'file'), ('vm/root/pipe', 'other')}
    assert 'pool default: 5 entries no volume owns' in out, out
    for path, _ in expected:
        assert path in out
    listed = service.json('pool', 'orphans', 'default')
    assert {(o['path'], o['type']) for o in listed} == expected
    assert {o['path']: o['size'] for o in listed}['stray.img'] == 4096

    # Only names in the list can be removed; a volume's directory is not.
    rc, _, err = service.cli('pool', 'orphans', 'default', '--remove',
                             'vm/root')
    assert rc == 1 and 'not orphans: vm/root' in err, err
    # Something the root side cannot remove refuses the whole call.
    before = rig.tree(pool)
    rc, _, err = service.cli('pool', 'orphans', 'default', '--remove')
    assert rc == 1 and 'vm/root/pipe' in err, err
    assert rig.tree(pool) == before
    rig.run(['/bin/rm', f'{pool}/vm/root/pipe'])

    assert service.json('pool', 'orphans', 'default', '--remove',
                        'stray.img') == [{'path': 'stray.img',
                                          'removed': True}]
    removed = service.json('pool', 'orphans', 'default', '--remove')
    assert {r['path'] for r in removed} == {'ghost', 'vm/old',
                                            'vm/root/notes.txt'}
    assert service.json('pool', 'orphans', 'default') == []
    assert {p for p in rig.tree(pool)} == {'vm', 'vm/root', 'vm/root/c1.img'}
    service.json('domain', 'start', 'vm')
    service.json('domain', 'stop', 'vm')
    service.stop()
    service.start()
    assert 'no volume owns' not in service.output().split(
        'volsepd: ready')[-2]


def test_an_orphan_volume_directory_can_be_adopted(service, rig):
    pool = _pool_dir(service)
    data = b'lost volume\n' * 1000
    rig.mkdir(f'{pool}/ghost/disk')
    rig.write(f'{pool}/ghost/disk/c2.img', data + b'\0' * (MiB - len(data)))
    rig.write(f'{pool}/ghost/disk/r1@20260101T000000Z.img', b'\0' * MiB)
    info = service.json('pool', 'adopt', 'default', 'ghost:disk')
    assert info['size'] == MiB and info['kind'] == 'persistent'
    assert [r['id'] for r in service.json('volume', 'revisions',
                                          'ghost:disk')] == [1]
    assert service.json('pool', 'orphans', 'default') == []
    started = service.json('domain', 'start', 'ghost')
    assert rig.read(started[0]['path'], 0, len(data)) == data
    service.json('domain', 'stop', 'ghost')
    # Recorded volumes and non-orphans are refused.
    rc, _, err = service.cli('pool', 'adopt', 'default', 'ghost:disk')
    assert rc == 1 and 'no orphan directory' in err
    service.stop()
    service.start()
    assert ('ghost', 'disk') in _volumes(service)


# -- item 5: pools that overlap; all-or-nothing volume removal ---------------

def test_overlapping_pools_are_refused_and_nothing_is_created(service, rig):
    base = f'{service.state_dir}/pools'
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '4M')
    service.json('pool', 'add', 'a', 'file', '-o', f'dir_path={base}/a')
    rig.mkdir(f'{base}/grp')
    service.json('pool', 'add', 'x', 'file', '-o', f'dir_path={base}/grp/x')
    before = rig.tree(base)
    refused = {
        'same': f'{base}/a',                      # another pool's directory
        'inside': f'{base}/a/sub',                # inside another pool
        'contains': f'{base}/grp',                # holding pool x
        'involume': f'{base}/default/vm/root',    # a volume's directory
        'belowvolume': f'{base}/default/vm/root/p',
        'unnormal': f'{base}/grp/../a',
    }
    for name, path in refused.items():
        rc, out, err = service.cli('pool', 'add', name, 'file', '-o',
                                   f'dir_path={path}')
        assert rc == 1, (name, out, err)
        assert err.startswith('volsep: InvalidArgument:'), (name, err)
    assert rig.tree(base) == before
    assert {p['name'] for p in service.json('pool', 'list')} == {
        'a', 'default', 'x'}
    # Siblings whose names share a prefix are not overlaps.
    service.json('pool', 'add', 'a2', 'file', '-o', f'dir_path={base}/a2')


def test_a_remove_that_cannot_finish_changes_nothing(service, rig):
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '4M', '--revisions-to-keep', '2')
    service.json('domain', 'start', 'vm')
    service.json('domain', 'stop', 'vm')
    pool = _pool_dir(service)
    volume_dir = f'{pool}/vm/root'
    rig.mkfifo(f'{volume_dir}/zz-fifo')   # after every image, by name
    before = rig.tree(pool)
    rc, _, err = service.cli('volume', 'remove', 'vm:root')
    assert rc == 1 and 'zz-fifo' in err, err
    assert rig.tree(pool) == before
    assert _volumes(service) == {('vm', 'root'): 4 * MiB}
    assert len(service.json('volume', 'revisions', 'vm:root')) == 1
    service.json('domain', 'start', 'vm')
    service.json('domain', 'stop', 'vm')

    rig.run(['/bin/rm', f'{volume_dir}/zz-fifo'])
    assert service.json('volume', 'remove', 'vm:root')['removed'] is True
    assert rig.tree(pool) == {}
    assert _volumes(service) == {}


def test_an_interrupted_remove_is_undone_or_finished_at_start(service, rig):
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '4M')
    service.stop()
    pool = _pool_dir(service)
    # Set aside, but the record still lists it: the removal never happened.
    rig.rename(f'{pool}/vm/root', f'{pool}/vm/root@removing')
    # Set aside and dropped from the record: only the deletion was left.
    rig.mkdir(f'{pool}/vm/old@removing')
    rig.write(f'{pool}/vm/old@removing/c1.img', b'\0' * 4096)
    rig.mkdir(f'{pool}/gone/disk@removing')
    rig.write(f'{pool}/gone/disk@removing/c1.img', b'\0' * 4096)
    service.start()
    assert set(rig.tree(pool)) == {'vm', 'vm/root', 'vm/root/c1.img'}
    assert _volumes(service) == {('vm', 'root'): 4 * MiB}
    service.json('domain', 'start', 'vm')
    service.json('domain', 'stop', 'vm')
    assert service.json('pool', 'orphans', 'default') == []


# -- item 7: a refused pool leaves nothing behind ----------------------------

@pytest.fixture
def ext4_service(rig):
    state_dir = sh.fresh_state_dir('ext4')
    svc = sh.Service(state_dir, policy=EVERYONE).start()
    yield svc
    if svc.pid is not None:
        svc.stop()
    rig.rmtree(state_dir)


def test_refused_reflink_pool_leaves_no_directory(ext4_service, rig):
    svc = ext4_service
    base = f'{svc.state_dir}/pools'
    before = rig.tree(base)
    rc, _, err = svc.cli('pool', 'add', 'r', 'file-reflink', '-o',
                         f'dir_path={base}/r')
    assert rc == 1 and 'FICLONE' in err, err
    assert rig.tree(base) == before
    assert 'r' not in {p['name'] for p in svc.json('pool', 'list')}
    # A directory that was there before is the operator's: it stays.
    rig.mkdir(f'{base}/mine')
    rc, _, err = svc.cli('pool', 'add', 'r', 'file-reflink', '-o',
                         f'dir_path={base}/mine')
    assert rc == 1 and 'FICLONE' in err, err
    assert 'mine' in rig.tree(base)
    svc.json('pool', 'add', 'r', 'file-reflink', '-o', f'dir_path={base}/r',
             '-o', 'setup_check=no')
