"""The lvm_thin driver on real dm-thin, in the guest: the volume scenarios
of the file drivers through a Manager (the frontend in this unprivileged
process) and the real root daemons, and the refusals of the root
entrypoints themselves."""

import os
import subprocess
import uuid

import pytest
from lxml import etree

from tests import image_corpus as corpus
from tests import storage_helpers as sh
from tests.conftest import ROOTS
from tests.guest import lvm_helpers as lh
from volsep.drivers import errors
from volsep.privileged import errors as root_errors
from volsep.privileged import lvm
from volsep.privileged import lvm_names

MiB = lh.MiB


@pytest.fixture
def staging_dir(rig):
    path = f'{ROOTS["plain"]}/staging-{uuid.uuid4().hex[:6]}'
    yield path
    rig.rmtree(path)


@pytest.fixture
def mgr(tmp_path, staging_dir):
    from volsep.frontend import manager as manager_module
    state = tmp_path / f'state-{uuid.uuid4().hex[:6]}'
    state.mkdir()
    manager = manager_module.Manager(str(state))
    manager.add_pool('lv', 'lvm_thin', [('volume_group', lh.VG),
                                        ('thin_pool', lh.THIN_POOL),
                                        ('revisions_to_keep', '2'),
                                        ('staging_dir', staging_dir)])
    yield manager
    for domain in list(manager.domains):
        if manager.domains[domain].running:
            manager.stop_domain(domain)
    # Snapshot volumes first: a source with snapshots cannot go.
    configs = [c for d in manager.domains.values()
               for c in d.volumes.values()]
    for config in sorted(configs, key=lambda c: c.kind != 'snapshot'):
        manager.remove_volume(config.address)


def _domain():
    return f'd{uuid.uuid4().hex[:8]}'


def _commit(rig, mgr, domain, data, offset=0):
    started = mgr.start_domain(domain)
    rig.pwrite(started[0]['path'], offset, data)
    mgr.stop_domain(domain)


def _content(rig, mgr, address):
    return lh.digest(rig, mgr.volume_info(address)['path'])


def _expected(data, size, offset=0):
    image = bytearray(size)
    image[offset:offset + len(data)] = data
    return lh.sha256(bytes(image))


def test_pool_add_checks_the_thin_pool_and_the_allow_list(mgr, tmp_path,
                                                          rig):
    from volsep.frontend import manager as manager_module
    before = lh.lvs(rig)
    other = manager_module.Manager(str(tmp_path / 'other'))
    with pytest.raises(errors.InvalidArgument, match='not allowed'):
        other.add_pool('x', 'lvm_thin', [('volume_group', lh.VG),
                                         ('thin_pool', lh.DENIED)])
    with pytest.raises(errors.InvalidArgument, match='not allowed'):
        other.add_pool('x', 'lvm_thin', [('volume_group', 'novg'),
                                         ('thin_pool', lh.THIN_POOL)])
    for hostile in ('../x', 'a/b', '-x', 'tpool tiny', ''):
        with pytest.raises(errors.InvalidArgument):
            other.add_pool('x', 'lvm_thin', [('volume_group', lh.VG),
                                             ('thin_pool', hostile)])
    with pytest.raises(errors.InvalidArgument, match='used by pool lv'):
        mgr.add_pool('again', 'lvm_thin', [('volume_group', lh.VG),
                                           ('thin_pool', lh.THIN_POOL)])
    assert 'x' not in other.pools and 'again' not in mgr.pools
    assert lh.lvs(rig).keys() == before.keys()
    info = mgr.pool_info('lv')
    pool_row = lh.lvs(rig, f'{lh.VG}/{lh.THIN_POOL}')[lh.THIN_POOL]
    assert info['size'] == int(pool_row['lv_size'])
    assert info['usage'] == int(int(pool_row['lv_size']) *
                                float(pool_row['data_percent']) / 100)
    assert info['data_percent'] == float(pool_row['data_percent'])
    assert 0 < info['metadata_percent'] < 100


def test_persistent_volume_commits_reverts_and_never_reuses_ids(mgr, rig):
    domain = _domain()
    address = f'{domain}:root'
    mgr.create_volume(address, 'lv', 8 * MiB)
    assert lh.volsep_lvs(rig, domain, 'root') == [
        lvm_names.lv_name(domain, 'root', 'c1')]
    started = mgr.start_domain(domain)[0]
    assert started['path'] == \
        f'/dev/{lh.VG}/{lvm_names.lv_name(domain, "root", "w")}'
    assert rig.run(['test', '-b', started['path']])[0] == 0
    rig.pwrite(started['path'], 4096, b'A' * 4096)
    assert mgr.volume_info(address)['is_dirty']
    mgr.stop_domain(domain)
    a = _expected(b'A' * 4096, 8 * MiB, 4096)
    assert _content(rig, mgr, address) == a
    _commit(rig, mgr, domain, b'B' * 4096, 4096)
    _commit(rig, mgr, domain, b'C' * 4096, 4096)
    # revisions_to_keep=2: generations 2 (A) and 3 (B) stay beside 4 (C)
    assert [r['id'] for r in mgr.revisions(address)] == [2, 3]
    mgr.revert(address, 2)
    assert _content(rig, mgr, address) == a
    assert [r['id'] for r in mgr.revisions(address)] == [3, 4]
    mgr.revert(address)   # undo the revert: back to C
    assert _content(rig, mgr, address) == \
        _expected(b'C' * 4096, 8 * MiB, 4096)
    assert [r['id'] for r in mgr.revisions(address)] == [4, 5]
    with pytest.raises(errors.RevisionNotFound):
        mgr.revert(address, 2)
    assert lh.volsep_lvs(rig, domain, 'root') == sorted(
        lvm_names.lv_name(domain, 'root', f'c{n}') for n in (4, 5, 6))


def test_volatile_and_snapshot_volumes(mgr, rig):
    source, user = _domain(), _domain()
    mgr.create_volume(f'{source}:root', 'lv', 4 * MiB)
    _commit(rig, mgr, source, b'S' * 512)
    mgr.create_volume(f'{user}:root', 'lv', kind='snapshot',
                      source=f'{source}:root')
    mgr.create_volume(f'{user}:tmp', 'lv', 4 * MiB, kind='volatile')
    assert lh.volsep_lvs(rig, user, 'tmp') == []
    started = {d['volume']: d['path'] for d in mgr.start_domain(user)}
    assert rig.read(started['root'], 0, 512) == b'S' * 512
    assert rig.read(started['tmp'], 0, 4096) == bytes(4096)
    assert not mgr.volume_info(f'{user}:root')['is_outdated']
    rig.pwrite(started['root'], 0, b'X' * 512)
    rig.pwrite(started['tmp'], 0, b'T' * 512)
    _commit(rig, mgr, source, b'N' * 512)
    assert mgr.volume_info(f'{user}:root')['is_outdated']
    mgr.stop_domain(user)
    # Nothing of the snapshot's or the volatile volume's writes is kept,
    # and the source never saw them.
    assert lh.volsep_lvs(rig, user, 'tmp') == []
    assert lh.volsep_lvs(rig, user, 'root') == []
    assert _content(rig, mgr, f'{source}:root') == \
        _expected(b'N' * 512, 4 * MiB)
    started = {d['volume']: d['path'] for d in mgr.start_domain(user)}
    assert rig.read(started['root'], 0, 512) == b'N' * 512
    assert rig.read(started['tmp'], 0, 512) == bytes(512)
    mgr.stop_domain(user)


def test_import_export_and_a_short_stream_changes_nothing(mgr, rig):
    domain = _domain()
    address = f'{domain}:root'
    mgr.create_volume(address, 'lv', 4 * MiB)
    _commit(rig, mgr, domain, b'O' * 4096)
    old = _content(rig, mgr, address)
    data = (b"I" * 65536 + bytes(65536)) * 32   # 4 MiB, half zeros
    mgr.import_begin(address, len(data), force=True)
    mgr.import_write(address, 0, data[:1 << 20])
    mgr.import_end(address, False)   # the stream ended short
    assert _content(rig, mgr, address) == old
    assert lvm_names.lv_name(domain, 'root', 't') not in lh.lvs(rig)
    mgr.import_begin(address, len(data), force=True)
    for offset in range(0, len(data), 1 << 20):
        mgr.import_write(address, offset, data[offset:offset + (1 << 20)])
    mgr.import_end(address, True)
    assert _content(rig, mgr, address) == lh.sha256(data)
    assert mgr.volume_info(address)['size'] == len(data)
    export = mgr.export_begin(address)
    _commit(rig, mgr, domain, b'L' * 4096)   # after the export began
    read = b''.join(mgr.export_read(address, export['path'], offset, 1 << 20)
                    for offset in range(0, export['size'], 1 << 20))
    mgr.export_end(address, export['path'])
    assert lh.sha256(read) == lh.sha256(data)
    assert lh.volsep_lvs(rig, domain, 'root') == sorted(
        lvm_names.lv_name(domain, 'root', f'c{n}') for n in (2, 3, 4))


def _import_file(mgr, address, path, fmt):
    with open(path, 'rb') as f:
        sh.import_stream(mgr, address, f.read(), fmt)


def _export_file(mgr, address, fmt, path):
    export = mgr.export_begin(address, fmt)
    with open(path, 'wb') as f:
        for offset in range(0, export['size'], MiB):
            f.write(mgr.export_read(address, export['path'], offset, MiB))
    mgr.export_end(address, export['path'])


def _same_image(fmt, a, b_fmt, b):
    rc = subprocess.run(
        ['/usr/bin/qemu-img', 'compare', '-q', '-f', fmt, '-F', b_fmt, a, b])
    assert rc.returncode == 0, (a, b)


# qemu-img starts slowly under TCG: two formats of each kind, not all
ROUND_TRIPS = [c for c in corpus.BENIGN
               if c.name in ('qcow2-compressed', 'vmdk-stream-optimized')]
REFUSED = [c for c in corpus.HOSTILE
           if c.name in ('qcow2-backing-host-file',
                         'vmdk-descriptor-host-extent')]


def test_other_formats_go_through_the_staging_dir(mgr, rig, tmp_path,
                                                  staging_dir):
    """A qcow2 or vmdk image is inspected, converted by the root side's
    confined qemu-img into the staging directory, copied into a new
    generation; exports in raw and qcow2 read as the source does. A
    hostile image changes nothing, and nothing stays in the staging
    directory."""
    domain = _domain()
    address = f'{domain}:root'
    mgr.create_volume(address, 'lv', MiB)
    for case in ROUND_TRIPS:
        (tmp_path / case.name).mkdir()
        source = case.make(str(tmp_path / case.name))
        _import_file(mgr, address, source, case.declared)
        for fmt in ('raw', 'qcow2'):
            out = str(tmp_path / f'{case.name}.{fmt}')
            _export_file(mgr, address, fmt, out)
            _same_image(fmt, out, corpus.qemu_format(case.declared), source)
        assert rig.tree(staging_dir) == {}, case.name
    before = (lh.volsep_lvs(rig, domain, 'root'), _content(rig, mgr, address),
              mgr.revisions(address))
    for case in REFUSED:
        (tmp_path / case.name).mkdir()
        with pytest.raises(errors.UnsafeImage):
            _import_file(mgr, address, case.make(str(tmp_path / case.name)),
                         case.declared)
        assert (lh.volsep_lvs(rig, domain, 'root'),
                _content(rig, mgr, address),
                mgr.revisions(address)) == before, case.name
        assert rig.tree(staging_dir) == {}, case.name


def test_an_upload_cut_short_is_cleared_at_start_up(mgr, rig, staging_dir):
    from volsep.frontend import manager as manager_module
    domain = _domain()
    address = f'{domain}:root'
    mgr.create_volume(address, 'lv', MiB)
    before = lh.volsep_lvs(rig, domain, 'root')
    path = mgr.import_begin(address, MiB, 'qcow2', force=True)
    assert path.startswith(f'{staging_dir}/{domain}+root/')
    assert rig.tree(staging_dir) != {}
    # The service dies here; the next one finds the upload and drops it.
    manager_module.Manager(mgr.store.directory).reconcile()
    assert rig.tree(staging_dir) == {}
    assert lh.volsep_lvs(rig, domain, 'root') == before


def test_without_a_staging_dir_only_raw_is_accepted(tmp_path, rig):
    from volsep.frontend import manager as manager_module
    other = manager_module.Manager(str(tmp_path / 'raw-only'))
    with pytest.raises(errors.InvalidArgument, match='absolute'):
        other.add_pool('r', 'lvm_thin', [('volume_group', lh.VG),
                                         ('thin_pool', lh.TINY),
                                         ('staging_dir', 'relative/dir')])
    other.add_pool('r', 'lvm_thin', [('volume_group', lh.VG),
                                     ('thin_pool', lh.TINY)])
    domain = _domain()
    other.create_volume(f'{domain}:root', 'r', MiB)
    try:
        with pytest.raises(errors.InvalidArgument, match='staging_dir'):
            other.import_begin(f'{domain}:root', MiB, 'qcow2', force=True)
        with pytest.raises(errors.InvalidArgument, match='staging_dir'):
            other.export_begin(f'{domain}:root', 'qcow2')
        assert lh.volsep_lvs(rig, domain, 'root') == [
            lvm_names.lv_name(domain, 'root', 'c1')]
    finally:
        other.remove_volume(f'{domain}:root')


def test_clone_is_a_thin_snapshot_and_stays_independent(mgr, rig):
    source, target = _domain(), _domain()
    mgr.create_volume(f'{source}:root', 'lv', 4 * MiB)
    _commit(rig, mgr, source, b'S' * 4096)
    mgr.create_volume(f'{target}:root', 'lv', 4 * MiB)
    mgr.clone(f'{source}:root', f'{target}:root')
    rows = lh.lvs(rig)
    clone = rows[lvm_names.lv_name(target, 'root', 'c2')]
    assert clone['origin'] == lvm_names.lv_name(source, 'root', 'c2')
    s = _expected(b'S' * 4096, 4 * MiB)
    _commit(rig, mgr, source, b'Z' * 4096)
    mgr.remove_volume(f'{source}:root')
    assert lh.volsep_lvs(rig, source, 'root') == []
    assert _content(rig, mgr, f'{target}:root') == s


def test_resize_grows_refuses_shrink_unless_forced_and_never_running(mgr,
                                                                     rig):
    domain = _domain()
    address = f'{domain}:root'
    mgr.create_volume(address, 'lv', 8 * MiB)
    _commit(rig, mgr, domain, b'R' * 4096)
    mgr.resize(address, 16 * MiB)
    assert mgr.volume_info(address)['size'] == 16 * MiB
    # a new generation (3); 1 and 2 stay as revisions (keep 2)
    assert [r['id'] for r in mgr.revisions(address)] == [1, 2]
    with pytest.raises(errors.InvalidArgument, match='--force'):
        mgr.resize(address, 8 * MiB)
    started = mgr.start_domain(domain)[0]
    with pytest.raises(errors.VolumeBusy):
        mgr.resize(address, 8 * MiB, force=True)
    mgr.resize(address, 24 * MiB)   # live: the VM's device grows
    rc, out, _ = rig.run(['blockdev', '--getsize64', started['path']])
    assert int(out) == 24 * MiB
    mgr.stop_domain(domain)
    mgr.resize(address, 8 * MiB, force=True)
    assert mgr.volume_info(address)['size'] == 8 * MiB
    assert _content(rig, mgr, address) == _expected(b'R' * 4096, 8 * MiB)


def test_clear_and_remove_match_exact_names_only(mgr, rig):
    mgr.create_volume('some-vm-root:private', 'lv', 4 * MiB)
    mgr.create_volume('some-vm:root-private', 'lv', 4 * MiB)
    _commit(rig, mgr, 'some-vm', b'K' * 4096)
    _commit(rig, mgr, 'some-vm-root', b'G' * 4096)
    mgr.clear('some-vm-root:private')
    assert _content(rig, mgr, 'some-vm-root:private') == \
        _expected(b'', 4 * MiB)
    mgr.remove_volume('some-vm-root:private')
    assert lh.volsep_lvs(rig, 'some-vm-root', 'private') == []
    assert _content(rig, mgr, 'some-vm:root-private') == \
        _expected(b'K' * 4096, 4 * MiB)
    assert len(lh.volsep_lvs(rig, 'some-vm', 'root-private')) == 2


def test_disk_xml_is_a_block_disk_that_validates(mgr, rig, tmp_path):
    domain = _domain()
    mgr.create_volume(f'{domain}:root', 'lv', 4 * MiB)
    started = mgr.start_domain(domain)[0]
    whole = mgr.disk_xml(domain, full=True)
    disk = etree.fromstring(whole.encode()).find('devices/disk')
    assert disk.get('type') == 'block'
    assert disk.find('source').get('dev') == started['path']
    assert disk.find('driver').get('type') == 'raw'
    path = tmp_path / 'domain.xml'
    path.write_text(whole)
    rc, out, err = rig.run(['virt-xml-validate', str(path), 'domain'])
    assert rc == 0, (out, err)
    mgr.stop_domain(domain)


def test_a_full_thin_pool_fails_cleanly_and_leaves_other_volumes(rig,
                                                                 tmp_path):
    from volsep.frontend import manager as manager_module
    # Writes into a full pool fail at once instead of queueing.
    lh.lvm(rig, 'lvchange', '--errorwhenfull', 'y', f'{lh.VG}/{lh.TINY}')
    mgr = manager_module.Manager(str(tmp_path / 'tiny'))
    mgr.add_pool('tiny', 'lvm_thin', [('volume_group', lh.VG),
                                      ('thin_pool', lh.TINY)])
    mgr.create_volume('keep:root', 'tiny', 4 * MiB)
    _commit(rig, mgr, 'keep', b'K' * 4096)
    kept = _content(rig, mgr, 'keep:root')
    mgr.create_volume('big:root', 'tiny', 64 * MiB)
    old = _content(rig, mgr, 'big:root')
    before = lh.lvs(rig)
    # The frontend refuses a stream the pool cannot hold, before any LV.
    with pytest.raises(errors.StorageError, match='no space'):
        mgr.import_begin('big:root', 64 * MiB, force=True)
    assert lh.lvs(rig).keys() == before.keys()
    # The root side, driven past that as a compromised frontend would:
    # the writes that do not fit fail with a clear error, and removing the
    # half-written LV gives the space back.
    target = lvm_names.lv_address(lh.VG, lh.TINY, 'big', 'root', 't')
    lvm.create(target, 64 * MiB, True)
    data = bytes(range(256)) * 4096   # 1 MiB, no zeros
    with pytest.raises(root_errors.PrivilegedError,
                       match='out of space'):
        for offset in range(0, 64 * MiB, len(data)):
            lvm.write_at(target, offset, data)
        lvm.flush(target)
    lvm.remove(target)
    assert _content(rig, mgr, 'big:root') == old
    assert _content(rig, mgr, 'keep:root') == kept
    assert lh.lvs(rig).keys() == before.keys()
    for address in ('big:root', 'keep:root'):
        mgr.remove_volume(address)


# -- the root entrypoints themselves, as a compromised frontend calls them --

def _addr(domain, volume, suffix, pool=None):
    return lvm_names.lv_address(lh.VG, pool or lh.THIN_POOL, domain, volume,
                                suffix)


def test_root_side_never_touches_an_lv_outside_an_allowed_thin_pool(rig):
    domain = _domain()
    # An LV in the denied pool under a name volsep would use.
    outside = lvm_names.lv_name(domain, 'root', 'c1')
    lh.lvm(rig, 'lvcreate', '--type', 'thin', '-V', '4m', '--thinpool',
           lh.DENIED, '-n', outside, lh.VG)
    # And a plain (non-thin) check: a look-alike in the allowed pool's VG
    # that is no thin LV of it cannot be made here without space, so the
    # denied pool stands for "anywhere else".
    lvm.create(_addr(domain, 'root', 'c3'), 4 * MiB, False)
    before = lh.lvs(rig)
    attempts = [
        lambda: lvm.report(lh.VG, lh.DENIED),
        lambda: lvm.remove(_addr(domain, 'root', 'c1', lh.DENIED)),
        lambda: lvm.snapshot(_addr(domain, 'root', 'c1', lh.DENIED),
                             _addr(domain, 'root', 'w'), True),
        lambda: lvm.commit(_addr(domain, 'root', 'c1', lh.DENIED), 'c2',
                           []),
        lambda: lvm.activate(_addr(domain, 'root', 'c1', lh.DENIED), True),
        lambda: lvm.resize(_addr(domain, 'root', 'c1', lh.DENIED), 8 * MiB,
                           False),
    ]
    for attempt in attempts:
        with pytest.raises(root_errors.InvalidArgument, match='not allowed'):
            attempt()
    # Named through the allowed pool, the LV in the denied pool is found
    # by name but refused: it is not a thin LV of the allowed pool.
    for attempt in (
            lambda: lvm.remove(_addr(domain, 'root', 'c1')),
            lambda: lvm.snapshot(_addr(domain, 'root', 'c1'),
                                 _addr(domain, 'root', 'w'), True),
            lambda: lvm.commit(_addr(domain, 'root', 'c1'), 'c2', []),
            # A good LV to publish, but a removal of the one outside.
            lambda: lvm.commit(_addr(domain, 'root', 'c3'), 'c4', ['c1']),
            lambda: lvm.activate(_addr(domain, 'root', 'c1'), True),
            lambda: lvm.resize(_addr(domain, 'root', 'c1'), 8 * MiB, True)):
        with pytest.raises(root_errors.PathRefused, match='not a thin LV'):
            attempt()
    after = lh.lvs(rig)
    assert after.keys() == before.keys()
    assert after[outside] == before[outside]
    lh.lvm(rig, 'lvremove', '-f', f'{lh.VG}/{outside}')
    lvm.remove(_addr(domain, 'root', 'c3'))


def test_root_side_refuses_hostile_arguments(rig):
    domain = _domain()
    lvm.create(_addr(domain, 'v', 'c1'), 4 * MiB, False)
    before = lh.lvs(rig)
    hostile = [
        (lambda: lvm.create(_addr(domain, 'v', 't'), 0, False), 'multiple'),
        (lambda: lvm.create(_addr(domain, 'v', 't'), 1000, False),
         'multiple'),
        (lambda: lvm.create(_addr(domain, 'v', 't'), 1 << 51, False),
         'outside'),
        (lambda: lvm.create(_addr(domain, 'v', 't'), True, False), 'integer'),
        (lambda: lvm.create(_addr(domain, 'v', 't'), 4 * MiB, 'yes'),
         'boolean'),
        (lambda: lvm.commit(_addr(domain, 'v', 'c1'), '../x', []),
         'is not VG/POOL'),
        (lambda: lvm.commit(_addr(domain, 'v', 'c1'), 'c0', []), 'suffix'),
        (lambda: lvm.commit(_addr(domain, 'v', 'c1'), 'c2', ['../c3']),
         'is not VG/POOL'),
        (lambda: lvm.commit(_addr(domain, 'v', 'c1'), 'c2', ['c2']),
         'other LVs'),
        (lambda: lvm.commit(_addr(domain, 'v', 'c1'), 'c2', ['c1']),
         'other LVs'),
        (lambda: lvm.commit(_addr(domain, 'v', 'c1'), 'c2', 'c1'),
         'must be a list'),
        (lambda: lvm.commit(_addr(domain, 'v', 'c1'), 'c2', ['w'] * 65),
         'must be a list'),
        (lambda: lvm.create(f'{lh.VG}/{lh.THIN_POOL}/{domain}/v/t;rm',
                            4 * MiB, False), 'suffix'),
        (lambda: lvm.write_at(_addr(domain, 'v', 'c1'), 0, b'x'),
         'only an import target'),
        (lambda: lvm.write_at(_addr(domain, 'v', 't'), -1, b'x'), 'outside'),
        (lambda: lvm.read_at(_addr(domain, 'v', 'e'), 0, 64 << 20),
         'length'),
    ]
    for call, message in hostile:
        with pytest.raises(root_errors.InvalidArgument, match=message):
            call()
    with pytest.raises(root_errors.AlreadyExists):
        lvm.create(_addr(domain, 'v', 'c1'), 4 * MiB, False)
    with pytest.raises(root_errors.NotFound):
        lvm.remove(_addr(domain, 'v', 'c7'))
    # A removal that cannot be done is found before the rename.
    with pytest.raises(root_errors.NotFound):
        lvm.commit(_addr(domain, 'v', 'c1'), 'c2', ['c7'])
    assert lh.lvs(rig).keys() == before.keys()
    lvm.remove(_addr(domain, 'v', 'c1'))
    assert lvm_names.lv_name(domain, 'v', 'c1') not in lh.lvs(rig)


def test_root_side_copies_files_only_beneath_allowed_roots(rig,
                                                          staging_dir):
    """import_file and export_file, which move an LV's data to and from a
    file, take only the import target and the export snapshot, and only
    regular files beneath the allowed roots, reached without symlinks."""
    domain = _domain()
    rig.mkdir(staging_dir, 0o700)
    lvm.create(_addr(domain, 'v', 'c1'), 4 * MiB, False)
    lvm.create(_addr(domain, 'v', 't'), 4 * MiB, True)
    lvm.snapshot(_addr(domain, 'v', 'c1'), _addr(domain, 'v', 'e'), True)
    target = f'/dev/{lh.VG}/{lvm_names.lv_name(domain, "v", "t")}'
    rig.write(f'{staging_dir}/big.img', b'B' * (5 * MiB))
    rig.symlink('/etc/shadow', f'{staging_dir}/link.img')
    before = (lh.lvs(rig).keys(), rig.tree(staging_dir))
    refused = [
        (lambda: lvm.import_file(_addr(domain, 'v', 'c1'),
                                 f'{staging_dir}/big.img'),
         root_errors.InvalidArgument, 'only an import target'),
        (lambda: lvm.import_file(_addr(domain, 'v', 't'), '/etc/shadow'),
         root_errors.PathRefused, 'outside the allowed roots'),
        (lambda: lvm.import_file(_addr(domain, 'v', 't'),
                                 f'{staging_dir}/link.img'),
         root_errors.PathRefused, None),
        (lambda: lvm.import_file(_addr(domain, 'v', 't'),
                                 f'{staging_dir}/big.img'),
         root_errors.InvalidArgument, 'does not fit'),
        (lambda: lvm.export_file(_addr(domain, 'v', 't'),
                                 f'{staging_dir}/out.img'),
         root_errors.InvalidArgument, 'only an export snapshot'),
        (lambda: lvm.export_file(_addr(domain, 'v', 'e'), '/etc/volsep-x'),
         root_errors.PathRefused, 'outside the allowed roots'),
        (lambda: lvm.export_file(_addr(domain, 'v', 'e'),
                                 f'{staging_dir}/link.img'),
         root_errors.AlreadyExists, None),
    ]
    for call, error, message in refused:
        with pytest.raises(error, match=message):
            call()
    assert (lh.lvs(rig).keys(), rig.tree(staging_dir)) == before
    assert rig.sha256(target) == lh.sha256(bytes(4 * MiB))
    assert not os.path.lexists('/etc/volsep-x')
    for suffix in ('e', 't', 'c1'):
        lvm.remove(_addr(domain, 'v', suffix))
