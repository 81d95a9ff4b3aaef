"""SCENARIOS.md on real XFS, btrfs (file-reflink) and ext4 (file, and
file-reflink with setup_check=no)."""

import hashlib
import re

import pytest

from tests import storage_helpers as h
from volsep.drivers import directory
from volsep.drivers import errors
from volsep.privileged import files

MiB = h.MiB


@pytest.fixture(params=h.POOL_KINDS, ids=[k[0] for k in h.POOL_KINDS])
def env(request, tmp_path, rig):
    mgr, base = h.make_manager(tmp_path, request.param, rig)
    yield mgr
    rig.rmtree(base)


def digest(data):
    return hashlib.sha256(data).hexdigest()


def files_of(rig, mgr, pool='p'):
    """Names, types, sizes, inodes and contents below the pool; directory
    mtimes are left out (adding and removing a temp file changes them)."""
    import stat
    return {name: entry if not stat.S_ISDIR(entry[0]) else entry[:3]
            for name, entry in rig.tree(mgr.pools[pool].dir_path).items()}


# -- lifecycle and kinds ----------------------------------------------------

def test_01_persistent_create_is_exact_sparse_and_zero(env, rig):
    info = env.create_volume('vm:root', 'p', 16 * MiB)
    assert info['size'] == 16 * MiB
    st = rig.lstat(info['path'])
    assert st['size'] == 16 * MiB and st['blocks'] * 512 <= 64 * 1024
    assert rig.read(info['path'], 0, MiB) == b'\0' * MiB


def test_02_volatile_and_snapshot_write_nothing_until_started(env, rig):
    env.create_volume('base:root', 'p', 4 * MiB)
    before = files_of(rig, env)
    env.create_volume('vm:vol', 'p', 4 * MiB, kind='volatile')
    env.create_volume('vm:snap', 'p', kind='snapshot', source='base:root')
    assert files_of(rig, env) == before
    env.start_domain('vm')
    assert files_of(rig, env) != before


def test_03_volatile_forgets_between_runs(env, rig):
    env.create_volume('vm:vol', 'p', 4 * MiB, kind='volatile')
    path = env.start_domain('vm')[0]['path']
    h.vm_write(rig, path, 0, b'secret' * 100)
    env.stop_domain('vm')
    path = env.start_domain('vm')[0]['path']
    assert rig.read(path, 0, 600) == b'\0' * 600


def test_04_persistent_commits_at_stop(env, rig):
    env.create_volume('vm:root', 'p', 4 * MiB)
    path = env.start_domain('vm')[0]['path']
    h.vm_write(rig, path, 4096, b'hello')
    env.stop_domain('vm')
    assert rig.read(env.volume_info('vm:root')['path'], 4096, 5) == b'hello'
    path = env.start_domain('vm')[0]['path']
    assert rig.read(path, 4096, 5) == b'hello'


def test_05_06_snapshot_sees_committed_only_and_never_writes_back(env, rig):
    env.create_volume('base:root', 'p', 4 * MiB)
    base_path = env.start_domain('base')[0]['path']
    h.vm_write(rig, base_path, 0, b'committed')
    env.stop_domain('base')
    base_path = env.start_domain('base')[0]['path']
    h.vm_write(rig, base_path, 0, b'UNCOMMIT')
    env.create_volume('vm:root', 'p', kind='snapshot', source='base:root')
    snap = env.start_domain('vm')[0]['path']
    assert rig.read(snap, 0, 9) == b'committed'
    h.vm_write(rig, snap, 100, b'snapshot-write')
    env.stop_domain('vm')
    env.stop_domain('base')
    base = env.volume_info('base:root')['path']
    assert rig.read(base, 100, 14) == b'\0' * 14
    snap = env.start_domain('vm')[0]['path']
    assert rig.read(snap, 100, 14) == b'\0' * 14


def test_07_outdated_only_for_running_snapshot(env, rig):
    env.create_volume('base:root', 'p', 4 * MiB)
    env.create_volume('vm:root', 'p', kind='snapshot', source='base:root')
    assert env.volume_info('vm:root')['is_outdated'] is False
    env.start_domain('vm')
    assert env.volume_info('vm:root')['is_outdated'] is False
    env.start_domain('base')
    env.stop_domain('base')  # the source commits
    assert env.volume_info('vm:root')['is_outdated'] is True
    assert env.volume_info('base:root')['is_outdated'] is False
    env.stop_domain('vm')
    assert env.volume_info('vm:root')['is_outdated'] is False


def test_08_snapshot_definition_rules(env, rig, tmp_path):
    env.create_volume('base:root', 'p', 4 * MiB)
    before = files_of(rig, env)
    with pytest.raises(errors.InvalidArgument, match='needs a source'):
        env.create_volume('vm:a', 'p', kind='snapshot')
    with pytest.raises(errors.InvalidArgument, match='only snapshot'):
        env.create_volume('vm:b', 'p', 4 * MiB, source='base:root')
    env.add_pool('q', 'file', [('dir_path', env.pools['p'].dir_path + 'q')])
    with pytest.raises(errors.InvalidArgument, match='pool p'):
        env.create_volume('vm:c', 'q', kind='snapshot', source='base:root')
    assert files_of(rig, env) == before
    assert [v['name'] for v in env.list_volumes()] == ['root']


def test_09_read_only_is_presented_ro_and_cannot_resize(env, rig):
    env.create_volume('vm:root', 'p', 4 * MiB, rw=False)
    assert env.start_domain('vm')[0]['rw'] is False
    env.stop_domain('vm')
    with pytest.raises(errors.InvalidArgument, match='read-only'):
        env.resize('vm:root', 8 * MiB)
    assert env.volume_info('vm:root')['size'] == 4 * MiB


def test_10_dirty_exactly_for_unstopped_persistent(env, rig):
    env.create_volume('base:root', 'p', 4 * MiB)
    env.create_volume('vm:vol', 'p', 4 * MiB, kind='volatile')
    env.create_volume('vm:snap', 'p', kind='snapshot', source='base:root')
    env.start_domain('base')
    env.start_domain('vm')
    assert env.volume_info('base:root')['is_dirty'] is True
    assert env.volume_info('vm:vol')['is_dirty'] is False
    assert env.volume_info('vm:snap')['is_dirty'] is False
    env.stop_domain('base')
    assert env.volume_info('base:root')['is_dirty'] is False


def test_11_remove_deletes_everything_and_the_empty_vm_dir(env, rig):
    env.create_volume('vm:root', 'p', 4 * MiB, revisions_to_keep=3)
    for _ in range(2):
        env.start_domain('vm')
        env.stop_domain('vm')
    env.import_begin('vm:root', MiB, force=True)   # a shrinking import
    env.import_end('vm:root', True)
    env.import_begin('vm:root', MiB)  # left pending
    env.remove_volume('vm:root')
    assert files_of(rig, env) == {}


def test_12_missing_image_fails_verification_before_any_start(env, rig):
    env.create_volume('vm:a', 'p', 4 * MiB)
    env.create_volume('vm:b', 'p', 4 * MiB)
    image = env.volume_info('vm:b')['path']
    rig.run(['rm', '-f', image])
    before = files_of(rig, env)
    with pytest.raises(errors.StorageError, match='committed image missing'):
        env.start_domain('vm')
    assert files_of(rig, env) == before
    assert env.domains['vm'].running is False


# -- revisions --------------------------------------------------------------

def _commit(env, rig, address, data):
    domain = address.split(':')[0]
    path = env.start_domain(domain)[0]['path']
    h.vm_write(rig, path, 0, data)
    env.stop_domain(domain)


def test_13_revisions_keep_previous_and_prune_oldest(env, rig):
    env.create_volume('vm:root', 'p', MiB, revisions_to_keep=2)
    for data in (b'one', b'two', b'three', b'four'):
        _commit(env, rig, 'vm:root', data)
    revs = env.revisions('vm:root')
    assert len(revs) == 2
    contents = [rig.read(_rev_path(env, 'vm:root', r['id']), 0, 5)
                for r in revs]
    assert contents == [b'two\0\0', b'three']
    assert revs[0]['id'] < revs[1]['id']


def _rev_path(env, address, rev_id):
    config = env._config(address)
    volume = env._volume(config)
    rev = next(r for r in volume.listing().revisions if r.id == rev_id)
    return volume._path(rev.entry['name'])


def test_14_zero_revisions(env, rig):
    env.create_volume('vm:root', 'p', MiB, revisions_to_keep=0)
    _commit(env, rig, 'vm:root', b'x')
    _commit(env, rig, 'vm:root', b'y')
    assert env.revisions('vm:root') == []


def test_15_revision_timestamps(env, rig):
    env.create_volume('vm:root', 'p', MiB, revisions_to_keep=3)
    _commit(env, rig, 'vm:root', b'x')
    _commit(env, rig, 'vm:root', b'y')
    revs = env.revisions('vm:root')
    assert all(re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ',
                            r['timestamp']) for r in revs)
    assert [r['id'] for r in revs] == sorted(r['id'] for r in revs)
    assert all(r['size'] == MiB for r in revs)


def test_16_no_working_copy_with_minus_one(env, rig):
    env.create_volume('vm:root', 'p', MiB, revisions_to_keep=2)
    _commit(env, rig, 'vm:root', b'x')
    assert env.revisions('vm:root')
    env.set_volume('vm:root', 'revisions_to_keep', -1)
    assert env.revisions('vm:root') == []
    committed = env.volume_info('vm:root')['path']
    inode = rig.lstat(committed)['ino']
    path = env.start_domain('vm')[0]['path']
    assert path == committed
    h.vm_write(rig, path, 0, b'direct')
    env.stop_domain('vm')
    assert env.volume_info('vm:root')['path'] == committed
    assert rig.lstat(committed)['ino'] == inode
    assert rig.read(committed, 0, 6) == b'direct'
    assert env.revisions('vm:root') == []


def test_17_no_snapshot_or_clone_of_running_minus_one_source(env, rig):
    env.create_volume('base:root', 'p', MiB, revisions_to_keep=-1)
    env.create_volume('vm:root', 'p', kind='snapshot', source='base:root')
    env.create_volume('other:root', 'p', MiB)
    env.start_domain('base')
    with pytest.raises(errors.VolumeBusy):
        env.start_domain('vm')
    with pytest.raises(errors.VolumeBusy):
        env.clone('base:root', 'other:root')
    env.stop_domain('base')
    env.start_domain('vm')


def test_18_switching_minus_one_refused_while_running(env, rig):
    env.create_volume('base:root', 'p', MiB)
    env.create_volume('vm:root', 'p', kind='snapshot', source='base:root')
    env.start_domain('vm')
    with pytest.raises(errors.VolumeBusy):
        env.set_volume('base:root', 'revisions_to_keep', -1)
    env.stop_domain('vm')
    env.set_volume('base:root', 'revisions_to_keep', -1)
    env.start_domain('base')
    with pytest.raises(errors.VolumeBusy):
        env.set_volume('base:root', 'revisions_to_keep', 1)
    env.stop_domain('base')
    with pytest.raises(errors.InvalidArgument):
        env.set_volume('base:root', 'revisions_to_keep', -2)
    assert env.volume_info('base:root')['revisions_to_keep'] == -1


# -- revert -----------------------------------------------------------------

def test_19_20_revert_named_and_latest(env, rig):
    env.create_volume('vm:root', 'p', MiB, revisions_to_keep=5)
    for data in (b'one', b'two', b'three'):
        _commit(env, rig, 'vm:root', data)
    revs = env.revisions('vm:root')
    assert len(revs) == 3  # zeros, 'one', 'two'
    env.revert('vm:root', revs[2]['id'])
    assert rig.read(env.volume_info('vm:root')['path'], 0, 3) == b'two'
    env.revert('vm:root')  # latest: the pre-revert 'three' (undo)
    assert rig.read(env.volume_info('vm:root')['path'], 0, 5) == b'three'
    path = env.start_domain('vm')[0]['path']
    assert rig.read(path, 0, 5) == b'three'
    env.stop_domain('vm')


def test_21_revert_to_missing_revision(env, rig):
    env.create_volume('vm:root', 'p', MiB)
    _commit(env, rig, 'vm:root', b'x')
    before = files_of(rig, env)
    with pytest.raises(errors.RevisionNotFound):
        env.revert('vm:root', 999)
    with pytest.raises(errors.InvalidArgument):
        env.revert('vm:root', '-3')
    assert files_of(rig, env) == before


def test_22_revert_running_or_dirty_refused(env, rig):
    env.create_volume('vm:root', 'p', MiB)
    _commit(env, rig, 'vm:root', b'x')
    path = env.start_domain('vm')[0]['path']
    h.vm_write(rig, path, 0, b'working')
    before = files_of(rig, env)
    with pytest.raises(errors.VolumeBusy):
        env.revert('vm:root')
    env.domains['vm'].running = False   # as after a crash: dirty, stopped
    with pytest.raises(errors.VolumeBusy, match='working copy'):
        env.revert('vm:root')
    assert files_of(rig, env) == before


def test_23_revert_during_import_refused(env, rig):
    env.create_volume('vm:root', 'p', MiB)
    _commit(env, rig, 'vm:root', b'x')
    env.import_begin('vm:root', MiB)
    with pytest.raises(errors.VolumeBusy, match='import'):
        env.revert('vm:root')


# -- export, import, clone, clear --------------------------------------------

def test_24_export_is_committed_data_while_running(env, rig):
    env.create_volume('vm:root', 'p', MiB)
    _commit(env, rig, 'vm:root', b'before')
    path = env.start_domain('vm')[0]['path']
    h.vm_write(rig, path, 0, b'AFTER!')
    export = env.export_begin('vm:root')['path']
    assert rig.read(export, 0, 6) == b'before'
    env.stop_domain('vm')
    assert rig.read(export, 0, 6) == b'before'
    env.export_end('vm:root', export)


def test_24_export_of_a_volume_written_in_place_is_refused_while_running(
        env, rig):
    """With revisions_to_keep = -1 the VM writes the committed image: an
    export then could only give bytes of the run (or a torn copy), so it
    is refused until the volume stops, and nothing is left behind."""
    env.create_volume('vm:root', 'p', MiB, revisions_to_keep=-1)
    _commit(env, rig, 'vm:root', b'before')
    path = env.start_domain('vm')[0]['path']
    h.vm_write(rig, path, 0, b'AFTER!')
    volume_dir = env.volume_info('vm:root')['path'].rsplit('/', 1)[0]
    listing = rig.tree(volume_dir)
    with pytest.raises(errors.VolumeBusy, match='revisions_to_keep=-1'):
        env.export_begin('vm:root')
    assert rig.tree(volume_dir) == listing
    env.stop_domain('vm')
    export = env.export_begin('vm:root')['path']
    assert rig.read(export, 0, 6) == b'AFTER!'
    env.export_end('vm:root', export)


def test_25_export_volatile_or_snapshot_refused(env, rig):
    env.create_volume('base:root', 'p', MiB)
    env.create_volume('vm:vol', 'p', MiB, kind='volatile')
    env.create_volume('vm:snap', 'p', kind='snapshot', source='base:root')
    for address in ('vm:vol', 'vm:snap'):
        with pytest.raises(errors.InvalidArgument):
            env.export_begin(address)


def test_26_27_import_is_separate_then_atomic(env, rig):
    env.create_volume('vm:root', 'p', MiB, revisions_to_keep=2)
    _commit(env, rig, 'vm:root', b'old')
    old_digest = h.content(rig, env, 'vm:root')
    target = env.import_begin('vm:root', 3 * MiB)
    assert rig.lstat(target)['size'] == 3 * MiB
    assert target != env.volume_info('vm:root')['path']
    rig.pwrite(target, 0, b'new content')
    info = env.volume_info('vm:root')
    assert (info['size'], h.content(rig, env, 'vm:root')) == (MiB, old_digest)
    revs_before = env.revisions('vm:root')
    info = env.import_end('vm:root', True)
    assert info['size'] == 3 * MiB
    assert rig.read(info['path'], 0, 11) == b'new content'
    revs = env.revisions('vm:root')
    assert len(revs) == len(revs_before) + 1
    assert rig.sha256(_rev_path(env, 'vm:root', revs[-1]['id'])) == old_digest


def test_28_failed_import_changes_nothing(env, rig):
    env.create_volume('vm:root', 'p', MiB)
    _commit(env, rig, 'vm:root', b'old')
    before = files_of(rig, env)
    target = env.import_begin('vm:root', 2 * MiB)
    rig.pwrite(target, 0, b'partial')
    env.import_end('vm:root', False)
    assert files_of(rig, env) == before


def test_29_30_import_pending_rules(env, rig):
    env.create_volume('vm:root', 'p', MiB)
    env.import_begin('vm:root', MiB)
    with pytest.raises(errors.VolumeBusy):
        env.import_begin('vm:root', MiB)
    env.import_end('vm:root', False)
    with pytest.raises(errors.InvalidArgument, match='no import pending'):
        env.import_end('vm:root', True)


def test_31_import_into_running_volatile_snapshot_refused(env, rig):
    env.create_volume('base:root', 'p', MiB)
    env.create_volume('vm:vol', 'p', MiB, kind='volatile')
    env.create_volume('vm:snap', 'p', kind='snapshot', source='base:root')
    env.start_domain('base')
    before = files_of(rig, env)
    for address in ('base:root', 'vm:vol', 'vm:snap'):
        with pytest.raises((errors.VolumeBusy, errors.InvalidArgument)):
            env.import_begin(address, MiB)
    assert files_of(rig, env) == before


def test_32_clone_takes_content_and_size(env, rig):
    env.create_volume('a:root', 'p', 2 * MiB)
    env.create_volume('b:root', 'p', 5 * MiB)
    _commit(env, rig, 'a:root', b'source data')
    info = env.clone('a:root', 'b:root')
    assert info['size'] == 2 * MiB
    assert h.content(rig, env, 'b:root') == h.content(rig, env, 'a:root')


def test_33_clone_across_pools(env, rig, pool_dir_on):
    other = pool_dir_on('ext4')
    env.add_pool('q', 'file', [('dir_path', f'{other}/q')])
    env.create_volume('a:root', 'p', 2 * MiB)
    env.create_volume('b:root', 'q', MiB)
    _commit(env, rig, 'a:root', b'cross pool')
    env.clone('a:root', 'b:root')
    assert h.content(rig, env, 'b:root') == h.content(rig, env, 'a:root')


def test_clear_zeroes_and_keeps_revision(env, rig):
    env.create_volume('vm:root', 'p', MiB)
    _commit(env, rig, 'vm:root', b'data')
    info = env.clear('vm:root')
    assert info['size'] == MiB
    assert rig.read(info['path'], 0, 4) == b'\0' * 4
    assert env.revisions('vm:root')


# -- resize -----------------------------------------------------------------

def test_34_grow_stopped_is_not_in_place(env, rig):
    env.create_volume('vm:root', 'p', MiB)
    _commit(env, rig, 'vm:root', b'keep')
    old_path = env.volume_info('vm:root')['path']
    export = env.export_begin('vm:root')['path']
    old_inode = rig.lstat(old_path)['ino']
    info = env.resize('vm:root', 3 * MiB)
    assert info['size'] == 3 * MiB
    assert rig.read(info['path'], 0, 4) == b'keep'
    assert rig.read(info['path'], 2 * MiB, 4096) == b'\0' * 4096
    assert rig.lstat(info['path'])['ino'] != old_inode
    assert rig.lstat(export)['size'] == MiB


def test_35_grow_running_survives_commit(env, rig):
    env.create_volume('vm:root', 'p', MiB)
    path = env.start_domain('vm')[0]['path']
    env.resize('vm:root', 4 * MiB)
    assert rig.lstat(path)['size'] == 4 * MiB
    h.vm_write(rig, path, 3 * MiB, b'tail')
    env.stop_domain('vm')
    info = env.volume_info('vm:root')
    assert info['size'] == 4 * MiB
    assert rig.read(info['path'], 3 * MiB, 4) == b'tail'


def test_36_shrink_needs_force(env, rig):
    env.create_volume('vm:root', 'p', 4 * MiB)
    _commit(env, rig, 'vm:root', b'x')
    before = files_of(rig, env)
    with pytest.raises(errors.InvalidArgument, match='force'):
        env.resize('vm:root', MiB)
    assert files_of(rig, env) == before
    assert env.resize('vm:root', MiB, force=True)['size'] == MiB


def test_37_volatile_resize_applies_at_next_start(env, rig):
    env.create_volume('vm:vol', 'p', MiB, kind='volatile')
    env.resize('vm:vol', 2 * MiB)
    path = env.start_domain('vm')[0]['path']
    assert rig.lstat(path)['size'] == 2 * MiB


def test_38_snapshot_resize_refused(env, rig):
    env.create_volume('base:root', 'p', MiB)
    env.create_volume('vm:snap', 'p', kind='snapshot', source='base:root')
    with pytest.raises(errors.InvalidArgument, match='snapshot'):
        env.resize('vm:snap', 2 * MiB)


@pytest.mark.parametrize('size', [-1, '-1', 1.5, '1.5', '1' * 20, 10 ** 19,
                                  '12abc', None, True, 1 << 51])
def test_39_bad_sizes_rejected_before_storage(env, rig, size):
    env.create_volume('vm:root', 'p', MiB)
    before = files_of(rig, env)
    with pytest.raises(errors.InvalidArgument):
        env.resize('vm:root', size)
    with pytest.raises(errors.InvalidArgument):
        env.create_volume('vm:other', 'p', size)
    with pytest.raises(errors.InvalidArgument):
        env.import_begin('vm:root', size)
    assert files_of(rig, env) == before


def test_39_pool_size_limit(env, rig):
    env.set_pool('p', [('max_volume_size', str(8 * MiB))])
    before = files_of(rig, env)
    with pytest.raises(errors.InvalidArgument, match='limit'):
        env.create_volume('vm:root', 'p', 9 * MiB)
    assert files_of(rig, env) == before
    env.create_volume('vm:root', 'p', 8 * MiB)


# -- crash-related scenarios (kill tests are in test_crash.py) -------------

def test_40_44_restart_keeps_running_working_copy(env, rig, tmp_path):
    from volsep.frontend import manager as manager_module
    env.create_volume('vm:root', 'p', MiB)
    path = env.start_domain('vm')[0]['path']
    h.vm_write(rig, path, 0, b'uncommitted')
    restarted = manager_module.Manager(env.store.directory)
    restarted.reconcile()
    assert restarted.volume_info('vm:root')['is_dirty'] is True
    restarted.stop_domain('vm')
    restarted.start_domain('vm')
    restarted.stop_domain('vm')
    assert rig.read(restarted.volume_info('vm:root')['path'], 0, 11) == \
        b'uncommitted'


def test_44_restart_of_stopped_domain_commits_or_discards(env, rig):
    from volsep.frontend import manager as manager_module
    env.create_volume('base:root', 'p', MiB)
    env.create_volume('vm:root', 'p', MiB)
    env.create_volume('vm:vol', 'p', MiB, kind='volatile')
    env.create_volume('vm:snap', 'p', kind='snapshot', source='base:root')
    path = env.start_domain('vm')[0]['path']
    h.vm_write(rig, path, 0, b'survives')
    env.store.mark_stopped('vm')   # recorded stopped, disk says not
    restarted = manager_module.Manager(env.store.directory)
    restarted.reconcile()
    for address in ('vm:root', 'vm:vol', 'vm:snap'):
        assert restarted.volume_info(address)['is_dirty'] is False
    assert rig.read(restarted.volume_info('vm:root')['path'], 0, 8) == \
        b'survives'
    names = [n for n in files_of(rig, restarted) if n.endswith('.img')]
    assert not any(n.rsplit('/', 1)[-1].startswith('w') for n in names)


def test_42_leftovers_removed_at_next_start(env, rig):
    env.create_volume('vm:root', 'p', MiB)
    config = env._config('vm:root')
    volume = env._volume(config)
    rig.write(volume._path('i.img'), b'half an import')
    rig.write(volume._path('x-0123456789abcdef.img'), b'old export')
    env.start_domain('vm')
    names = {e['name'] for e in volume.listing().unknown} | {
        n.rsplit('/', 1)[-1] for n in files_of(rig, env)}
    assert 'i.img' not in names
    assert 'x-0123456789abcdef.img' not in names


# -- concurrency -------------------------------------------------------------

def test_45_same_volume_operations_serialise(env, rig):
    import threading
    env.create_volume('vm:root', 'p', 64 * MiB)
    errors_seen = []

    def cycle():
        for _ in range(5):
            try:
                env.start_domain('vm')
            except errors.VolumeBusy:
                pass
            try:
                env.stop_domain('vm')
            except Exception as err:  # noqa: BLE001 - collected and checked
                errors_seen.append(err)
    threads = [threading.Thread(target=cycle) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors_seen == []
    env.stop_domain('vm')
    listing = env._volume(env._config('vm:root')).listing()
    assert len(listing.committed) == 1 and listing.working is None


def test_46_different_volumes_in_parallel(env, rig):
    import threading
    for i in range(6):
        env.create_volume(f'vm{i}:root', 'p', 4 * MiB)
    barrier = threading.Barrier(6)
    failures = []

    def work(i):
        barrier.wait()
        try:
            for _ in range(3):
                env.start_domain(f'vm{i}')
                env.stop_domain(f'vm{i}')
        except Exception as err:  # noqa: BLE001 - collected and checked
            failures.append(err)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert all(len(env.revisions(f'vm{i}:root')) == 1 for i in range(6))


# -- names and pools ---------------------------------------------------------

HOSTILE_NAMES = ['../x', 'a/b', '', '.hidden', '-dash', 'a' * 65, 'a b',
                 'vm\nroot', 'vm:root', '..', 'ümlaut', 'x\0y']


@pytest.mark.parametrize('bad', HOSTILE_NAMES)
def test_47_hostile_names_rejected(env, rig, bad):
    before = files_of(rig, env)
    with pytest.raises(errors.InvalidArgument):
        env.create_volume(f'{bad}:root', 'p', MiB)
    with pytest.raises(errors.InvalidArgument):
        env.create_volume(f'vm:{bad}', 'p', MiB)
    with pytest.raises(errors.InvalidArgument):
        env.add_pool(bad, 'file', [('dir_path', '/nonexistent')])
    assert files_of(rig, env) == before


def test_47_pool_add_rules(env, rig):
    d = env.pools['p'].dir_path
    with pytest.raises(errors.InvalidArgument, match='exists'):
        env.add_pool('p', 'file', [('dir_path', d + 'x')])
    with pytest.raises(errors.InvalidArgument, match='unknown driver'):
        env.add_pool('q', 'nope', [('dir_path', d + 'x')])
    with pytest.raises(errors.InvalidArgument, match='no option'):
        env.add_pool('q', 'file', [('dir_path', d + 'x'), ('colour', 'red')])
    with pytest.raises(errors.InvalidArgument, match='twice'):
        env.add_pool('q', 'file', [('dir_path', d + 'x'),
                                   ('dir_path', d + 'y')])
    with pytest.raises(errors.InvalidArgument, match='needs option'):
        env.add_pool('q', 'file', [])
    with pytest.raises(errors.InvalidArgument):
        env.add_pool('q', 'file', [('dir_path', '/etc/volsep-pool')])
    assert [p['name'] for p in env.list_pools()] == ['p']


def test_48_pool_remove_rules(env, rig):
    env.create_volume('vm:root', 'p', MiB)
    with pytest.raises(errors.PoolInUse):
        env.remove_pool('p')
    env.remove_volume('vm:root')
    env.set_default_pool('p')
    with pytest.raises(errors.PoolInUse, match='default'):
        env.remove_pool('p')
    env.default_pool = None
    env.remove_pool('p')
    assert env.list_pools() == []


def test_cleanup_never_touches_a_lookalike_volume(env, rig):
    env.create_volume('vm:data', 'p', MiB, revisions_to_keep=0)
    env.create_volume('vm:data2', 'p', MiB, revisions_to_keep=3)
    env.create_volume('vm-data:root', 'p', MiB)
    env.create_volume('foo-root:x', 'p', MiB)
    env.create_volume('foo:root', 'p', MiB)
    for dom in ('vm', 'vm-data', 'foo', 'foo-root'):
        env.start_domain(dom)
        env.stop_domain(dom)
    before = {a: h.content(rig, env, a) for a in
              ('vm:data2', 'vm-data:root', 'foo-root:x')}
    revisions = env.revisions('vm:data2')
    env.remove_volume('vm:data')
    env.remove_volume('foo:root')
    assert {a: h.content(rig, env, a) for a in before} == before
    assert env.revisions('vm:data2') == revisions


def test_pool_info_and_nesting(env, rig):
    """Pools may not nest (issue 11 item 5): refused, nothing made."""
    d = env.pools['p'].dir_path
    before = rig.tree(d)
    with pytest.raises(errors.InvalidArgument, match='may not overlap'):
        env.add_pool('inner', 'file', [('dir_path', f'{d}/inner')])
    assert rig.tree(d) == before
    info = env.pool_info('p')
    assert info['size'] > 0 and 0 <= info['usage'] <= info['size']
    assert info['included_in'] is None


def test_state_survives_restart_and_rejects_corruption(env, rig):
    from volsep.frontend import manager as manager_module
    env.create_volume('vm:root', 'p', MiB, revisions_to_keep=4, rw=False)
    state_dir = env.store.directory
    again = manager_module.Manager(state_dir)
    assert again.volume_info('vm:root') == env.volume_info('vm:root')
    document = f'{state_dir}/domains/vm.xml'
    with open(document) as f:
        good = f.read()
    with open(document, 'a') as f:
        f.write('<junk/>')
    with pytest.raises(errors.StorageError):
        manager_module.Manager(state_dir)
    with open(document, 'w') as f:
        f.write(good.replace('rw="false"', 'rw="maybe"'))
    with pytest.raises(errors.StorageError, match='invalid'):
        manager_module.Manager(state_dir)
    with open(document, 'w') as f:   # another domain's record, misfiled
        f.write(good.replace('name="vm"', 'name="other"'))
    with pytest.raises(errors.StorageError, match='describes domain'):
        manager_module.Manager(state_dir)


def test_listed_sizes_follow_every_change(env, rig):
    def listed(address):
        domain, name = address.split(':')
        return next(v['size'] for v in env.list_volumes()
                    if (v['domain'], v['name']) == (domain, name))
    env.create_volume('base:root', 'p', MiB)
    env.create_volume('vm:snap', 'p', kind='snapshot', source='base:root')
    env.create_volume('vm:vol', 'p', MiB, kind='volatile')
    assert listed('base:root') == MiB and listed('vm:snap') == MiB
    env.resize('base:root', 2 * MiB)
    assert listed('base:root') == 2 * MiB and listed('vm:snap') == 2 * MiB
    env.resize('vm:vol', 3 * MiB)
    assert listed('vm:vol') == 3 * MiB
    env.start_domain('base')
    env.resize('base:root', 4 * MiB)
    assert listed('base:root') == 4 * MiB
    env.stop_domain('base')
    env.import_begin('base:root', 5 * MiB)
    assert listed('base:root') == 4 * MiB
    env.import_end('base:root', True)
    assert listed('base:root') == 5 * MiB
    env.revert('base:root')
    assert listed('base:root') == 4 * MiB


# -- a start reads each persistent volume once ------------------------------
# What the check before starting read is reused by the start, unless the
# volume was changed in between, and then read again.

def _count_listings(monkeypatch):
    listed = []
    real = files.list_dir
    monkeypatch.setattr(files, 'list_dir',
                        lambda path: listed.append(path) or real(path))
    return listed


def test_a_start_lists_the_volume_once(env, rig, monkeypatch):
    env.create_volume('vm:root', 'p', 4 * MiB)
    listed = _count_listings(monkeypatch)
    env.start_domain('vm')
    assert len(listed) == 1, listed
    env.stop_domain('vm')


def test_what_a_start_or_stop_left_is_not_read_again(env, rig,
                                                     monkeypatch):
    """After the service's own stop, the next start and stop know the
    directory without listing it: one root call each."""
    env.create_volume('vm:root', 'p', 4 * MiB, revisions_to_keep=1)
    _commit(env, rig, 'vm:root', b'A' * 4096)
    listed = _count_listings(monkeypatch)
    for data in (b'B', b'C'):
        path = env.start_domain('vm')[0]['path']
        assert rig.read(path, 0, 4096) == (b'A' if data == b'B' else
                                           b'B') * 4096
        h.vm_write(rig, path, 0, data * 4096)
        env.stop_domain('vm')
    assert listed == []
    assert [r['id'] for r in env.revisions('vm:root')] == [3]
    path = env.start_domain('vm')[0]['path']
    assert rig.read(path, 0, 4096) == b'C' * 4096
    env.stop_domain('vm')


def test_a_change_between_a_stop_and_the_next_start_is_seen(env, rig):
    env.create_volume('vm:root', 'p', 4 * MiB, revisions_to_keep=2)
    _commit(env, rig, 'vm:root', b'A' * 4096)
    _commit(env, rig, 'vm:root', b'B' * 4096)
    env.revert('vm:root')   # another request, after the stop
    path = env.start_domain('vm')[0]['path']
    assert rig.read(path, 0, 4096) == b'A' * 4096
    env.stop_domain('vm')


def test_a_volume_changed_after_its_check_is_read_again(env, rig,
                                                        monkeypatch):
    env.create_volume('vm:root', 'p', 4 * MiB)
    _commit(env, rig, 'vm:root', b'A' * 4096)
    _commit(env, rig, 'vm:root', b'B' * 4096)
    real = directory.DirectoryVolume.verify
    changed = []

    def verify_then_revert(volume, known=None):
        listing = real(volume, known)
        if not changed:
            # Between the check and the start, another request reverts
            # the volume: the committed image the check saw is retired.
            changed.append(env.revert('vm:root'))
        return listing
    monkeypatch.setattr(directory.DirectoryVolume, 'verify',
                        verify_then_revert)
    path = env.start_domain('vm')[0]['path']
    assert changed
    assert rig.read(path, 0, 4096) == b'A' * 4096
    env.stop_domain('vm')
