"""The frontend's state split per domain (frontend/state.py): a start or
stop rewrites nothing it did not change, an interrupted stop is finished at
start-up, a crash's temporary files are removed, and the first layout's
single document is converted."""

import os

from tests import storage_helpers as h

MiB = 1 << 20
KIND = h.POOL_KINDS[0]   # file-reflink on XFS


def _manager(tmp_path, rig):
    mgr, base = h.make_manager(h.fresh_state_dir(tmp_path), KIND, rig)
    return mgr


def _identity(path):
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def test_start_and_stop_touch_only_their_domains_running_mark(tmp_path,
                                                              rig):
    mgr = _manager(tmp_path, rig)
    for domain in ('a', 'b', 'c'):
        mgr.create_volume(f'{domain}:root', 'p', MiB)
        mgr.create_volume(f'{domain}:tmp', 'p', MiB, kind='volatile')
    state = mgr.store.directory
    documents = [f'{state}/pools.xml'] + [f'{state}/domains/{d}.xml'
                                          for d in 'abc']
    before = {path: _identity(path) for path in documents}
    mgr.start_domain('b')
    with open(f'{state}/running/b') as f:
        assert f.read() == 'running\n'
    mgr.stop_domain('b')
    assert not os.path.exists(f'{state}/running/b')
    assert {path: _identity(path) for path in documents} == before
    assert sorted(os.listdir(f'{state}/domains')) == ['a.xml', 'b.xml',
                                                      'c.xml']


def test_a_stop_cut_short_is_finished_at_start_up(tmp_path, rig):
    """What a kill in the middle of `domain stop` leaves: the mark says
    stopping, the volatile volume is already discarded, the persistent
    one still has its working copy. Start-up completes the stop: nothing
    is recorded as running without its working copies, and the guest's
    data is committed."""
    from volsep.frontend import manager as manager_module
    mgr = _manager(tmp_path, rig)
    mgr.create_volume('vm:root', 'p', MiB)
    mgr.create_volume('vm:tmp', 'p', MiB, kind='volatile')
    started = {d['volume']: d['path'] for d in mgr.start_domain('vm')}
    h.vm_write(rig, started['root'], 0, b'guest data')
    mgr.store.mark_stopping('vm')
    mgr._stop_one(mgr._config('vm:tmp'))
    assert mgr.volume_info('vm:tmp')['path'] is None

    restarted = manager_module.Manager(mgr.store.directory)
    assert restarted.domains['vm'].running is False
    restarted.reconcile()
    assert not os.path.exists(f'{mgr.store.directory}/running/vm')
    assert restarted.volume_info('vm:root')['is_dirty'] is False
    assert rig.read(restarted.volume_info('vm:root')['path'], 0, 10) == \
        b'guest data'
    again = restarted.start_domain('vm')
    assert all(d['path'] for d in again)


def test_temporary_files_of_an_interrupted_save_are_removed(tmp_path, rig):
    from volsep.frontend import manager as manager_module
    mgr = _manager(tmp_path, rig)
    mgr.create_volume('vm:root', 'p', MiB)
    state = mgr.store.directory
    left = [f'{state}/.state-abc123', f'{state}/.tmp-x1',
            f'{state}/domains/.tmp-y2']
    for path in left:
        with open(path, 'w') as f:
            f.write('<half')
    restarted = manager_module.Manager(state)
    assert not any(os.path.exists(path) for path in left)
    assert restarted.volume_info('vm:root')['size'] == MiB


def test_the_single_document_layout_is_converted(tmp_path, rig):
    """A state directory of the first layout (one state.xml) loads with
    every pool, volume and running flag, and is converted for good."""
    from volsep.frontend import manager as manager_module
    mgr = _manager(tmp_path, rig)
    mgr.create_volume('vm:root', 'p', MiB, revisions_to_keep=3)
    mgr.create_volume('web:root', 'p', kind='snapshot', source='vm:root')
    mgr.start_domain('web')
    state = mgr.store.directory
    dir_path = mgr.pools['p'].options['dir_path']
    legacy = (
        '<volsep version="1" default-pool="p"><pools>'
        f'<pool name="p" driver="file-reflink"><option name="dir_path">'
        f'{dir_path}</option><option name="revisions_to_keep">1</option>'
        '</pool></pools><domains>'
        '<domain name="vm" running="false"><volume name="root" pool="p" '
        f'kind="persistent" size="{MiB}" rw="true" revisions-to-keep="3"/>'
        '</domain><domain name="web" running="true"><volume name="root" '
        'pool="p" kind="snapshot" size="0" rw="true" revisions-to-keep="1" '
        'source="vm:root"/></domain></domains></volsep>')
    for entry in ('pools.xml', 'domains/vm.xml', 'domains/web.xml',
                  'running/web'):
        os.unlink(f'{state}/{entry}')
    with open(f'{state}/state.xml', 'w') as f:
        f.write(legacy)
    converted = manager_module.Manager(state)
    assert not os.path.exists(f'{state}/state.xml')
    assert converted.default_pool == 'p'
    assert converted.domains['web'].running is True
    assert converted.domains['vm'].running is False
    info = converted.volume_info('web:root')
    assert info['source'] == 'vm:root' and info['kind'] == 'snapshot'
    assert converted.volume_info('vm:root')['revisions_to_keep'] == 3
    again = manager_module.Manager(state)   # from the new documents
    assert again.volume_info('web:root') == info
    again.reconcile()
    again.stop_domain('web')


def test_a_stop_whose_mark_was_lost_is_recognised_from_the_disk(tmp_path,
                                                                rig):
    """Marks are not flushed: after a host crash the 'stopping' mark may
    be lost while a volume's stop reached the disk. A running domain with
    a working copy gone is then taken as a stop cut short, and finished."""
    from volsep.frontend import manager as manager_module
    mgr = _manager(tmp_path, rig)
    mgr.create_volume('vm:root', 'p', MiB)
    mgr.create_volume('vm:tmp', 'p', MiB, kind='volatile')
    started = {d['volume']: d['path'] for d in mgr.start_domain('vm')}
    h.vm_write(rig, started['root'], 0, b'kept')
    mgr._stop_one(mgr._config('vm:tmp'))   # no 'stopping' mark written
    with open(f'{mgr.store.directory}/running/vm') as f:
        assert f.read() == 'running\n'

    restarted = manager_module.Manager(mgr.store.directory)
    restarted.reconcile()
    assert restarted.domains['vm'].running is False
    assert not os.path.exists(f'{mgr.store.directory}/running/vm')
    assert rig.read(restarted.volume_info('vm:root')['path'], 0, 4) == \
        b'kept'


def test_a_running_domain_with_every_working_copy_stays_running(tmp_path,
                                                                rig):
    from volsep.frontend import manager as manager_module
    mgr = _manager(tmp_path, rig)
    mgr.create_volume('vm:root', 'p', MiB)
    mgr.create_volume('vm:tmp', 'p', MiB, kind='volatile')
    mgr.create_volume('vm:inplace', 'p', MiB, revisions_to_keep=-1)
    mgr.start_domain('vm')
    restarted = manager_module.Manager(mgr.store.directory)
    restarted.reconcile()
    assert restarted.domains['vm'].running is True
    assert all(restarted.volume_info(f'vm:{v}')['path']
               for v in ('root', 'tmp', 'inplace'))
