"""The qcow2 pool at parity (issue 15): export, import, revert, resize and
clone of chain volumes.

qemu-img is the oracle for content: a reference raw image is made with
`qemu-img convert` of the recorded chain (or of the source) and compared
with `qemu-img compare` against what volsep exports or records after each
step; `chain validate` checks the record against the headers after each
step; libvirt's own probing (tests/test_chains.py) checks the live chain
after revert and resize.
"""

import os
import uuid

import pytest

from tests import storage_helpers as sh
from tests import test_chains as tc

MiB = 1 << 20
KiB64 = 64 << 10
pool = tc.pool
libvirtd = tc.libvirtd


def _record(mgr, address):
    """The recorded chain, after `chain validate` passed on it."""
    return [[x['path'], x['format']] for x in mgr.chain_validate(address)]


def _compare(rig, ref, path, fmt, expect_same=True):
    rc, out, err = rig.run(['qemu-img', 'compare', '-f', 'raw', '-F', fmt,
                            ref, path])
    assert (rc == 0) == expect_same, (ref, path, out, err)


def _raw(rig, base_dir, size, writes):
    """A raw image of ``size`` bytes with ``writes`` [(offset, pattern)]
    of 64 KiB each."""
    path = f'{base_dir}/src-{uuid.uuid4().hex[:8]}.raw'
    tc._run(rig, ['qemu-img', 'create', '-q', '-f', 'raw', path, str(size)])
    for offset, pattern in writes:
        tc._write(rig, path, 'raw', offset, pattern)
    return path


def _import_file(mgr, rig, address, path, fmt='raw', force=True):
    return sh.import_stream(mgr, address, rig.read(path), fmt, force)


def _names(rig, mgr, address):
    directory = os.path.dirname(mgr._volume(mgr._config(address))._path('x'))
    return sorted(os.path.basename(p) for p in rig.tree(directory)
                  if p != directory)


def _unchanged(rig, base_dir, mgr, address):
    return (tc._tree(rig, base_dir), list(mgr._config(address).chain),
            mgr.revisions(address))


# -- export ----------------------------------------------------------------

@pytest.mark.parametrize('fmt', ['raw', 'qcow2'])
def test_export_is_the_flattened_committed_chain(pool, rig, fmt):
    mgr, base_dir = pool
    record = tc._layered(mgr, rig, 'vm:root', 3, base_fmt='raw')
    ref = tc._guest_view(rig, base_dir, record)
    before = _unchanged(rig, base_dir, mgr, 'vm:root')
    export = mgr.export_begin('vm:root', fmt)
    _compare(rig, ref, export['path'], fmt)
    info = tc._run(rig, ['qemu-img', 'info', '-f', fmt, export['path']])
    assert 'backing file' not in info      # standalone, flattened
    assert export['size'] == rig.lstat(export['path'])['size']
    assert mgr.export_read('vm:root', export['path'], 0, 16) == \
        rig.read(export['path'], 0, 16)
    mgr.export_end('vm:root', export['path'])
    assert _unchanged(rig, base_dir, mgr, 'vm:root') == before
    assert _record(mgr, 'vm:root') == record


def test_export_while_running_gives_the_committed_data(pool, rig):
    mgr, base_dir = pool
    record = tc._layered(mgr, rig, 'vm:root', 2)
    ref = tc._guest_view(rig, base_dir, record)
    overlay = mgr.start_domain('vm')[0]['path']
    tc._write(rig, overlay, 'qcow2', 0, 0x77)     # the guest writes on
    export = mgr.export_begin('vm:root', 'raw')
    _compare(rig, ref, export['path'], 'raw')
    mgr.export_end('vm:root', export['path'])
    assert len(_record(mgr, 'vm:root')) == 3      # the overlay on top
    mgr.stop_domain('vm')
    assert _record(mgr, 'vm:root')[1:] == record


def test_bad_exports_change_nothing(pool, rig, outside_dir):
    from volsep.drivers import errors
    mgr, base_dir = pool
    tc._layered(mgr, rig, 'vm:root', 2)
    mgr.create_volume('vm:tmp', 'p', MiB, kind='volatile')
    before = _unchanged(rig, base_dir, mgr, 'vm:root')
    with pytest.raises(errors.InvalidArgument):
        mgr.export_begin('vm:root', 'vmdk')
    with pytest.raises(errors.InvalidArgument):
        mgr.export_begin('vm:tmp', 'raw')
    export = mgr.export_begin('vm:root', 'raw')
    volume_dir = os.path.dirname(export['path'])
    for bad in (f'{outside_dir}/secret', f'{volume_dir}/L1.qcow2',
                f'{volume_dir}/../root/{os.path.basename(export["path"])}'):
        with pytest.raises(errors.InvalidArgument):
            mgr.export_read('vm:root', bad, 0, 10)
        with pytest.raises(errors.InvalidArgument):
            mgr.export_end('vm:root', bad)
    mgr.export_end('vm:root', export['path'])
    assert _unchanged(rig, base_dir, mgr, 'vm:root') == before


def test_export_leftover_is_removed_at_the_next_start(pool, rig):
    mgr, base_dir = pool
    tc._layered(mgr, rig, 'vm:root', 2)
    before = _names(rig, mgr, 'vm:root')
    mgr.export_begin('vm:root', 'qcow2')           # never ended
    assert len(_names(rig, mgr, 'vm:root')) == len(before) + 1
    mgr.start_domain('vm')
    mgr.stop_domain('vm')
    assert not [n for n in _names(rig, mgr, 'vm:root') if n.startswith('x-')]


# -- import ----------------------------------------------------------------

def test_raw_import_is_a_new_top_and_the_old_chain_a_revision(pool, rig):
    mgr, base_dir = pool
    record = tc._layered(mgr, rig, 'vm:root', 2)
    old = tc._guest_view(rig, base_dir, record)
    # Zeros where the old chain holds data: nothing of it may show through.
    src = _raw(rig, base_dir, 3 * MiB, [(KiB64, 0x55), (2 * MiB, 0x56)])
    info = _import_file(mgr, rig, 'vm:root', src)
    assert info['size'] == 3 * MiB
    after = _record(mgr, 'vm:root')
    assert after[1:] == record and len(after) == 3
    _compare(rig, src, after[0][0], 'qcow2')
    assert not [n for n in _names(rig, mgr, 'vm:root') if n.startswith('i')]
    # Undoable: the state before the import is a revision.
    old_top = tc_gen(record[0][0])
    assert old_top in [r['id'] for r in mgr.revisions('vm:root')]
    mgr.revert('vm:root', old_top)
    _compare(rig, old, _record(mgr, 'vm:root')[0][0], 'qcow2')
    assert mgr.volume_info('vm:root')['size'] == 4 * MiB


def test_without_revisions_an_import_or_clone_is_a_one_layer_chain(pool,
                                                                    rig):
    mgr, base_dir = pool
    tc._layered(mgr, rig, 'vm:root', 2)
    mgr.set_volume('vm:root', 'revisions_to_keep', 0)
    src = _raw(rig, base_dir, 6 * MiB, [(5 * MiB, 0x66)])   # larger
    assert _import_file(mgr, rig, 'vm:root', src)['size'] == 6 * MiB
    after = _record(mgr, 'vm:root')
    assert len(after) == 1 and mgr.revisions('vm:root') == []
    _compare(rig, src, after[0][0], 'qcow2')
    assert 'backing file' not in tc._run(rig, ['qemu-img', 'info', '-f',
                                               'qcow2', after[0][0]])
    source = tc._layered(mgr, rig, 'src:root', 3)
    mgr.clone('src:root', 'vm:root')
    after = _record(mgr, 'vm:root')
    assert len(after) == 1
    _compare(rig, tc._guest_view(rig, base_dir, source), after[0][0],
             'qcow2')


@pytest.mark.parametrize('fmt', ['qcow2', 'vmdk', 'vhdx', 'vdi'])
def test_foreign_formats_are_imported(pool, rig, fmt):
    mgr, base_dir = pool
    tc._layered(mgr, rig, 'vm:root', 1)
    src = _raw(rig, base_dir, 2 * MiB, [(0, 0x61), (MiB, 0x62)])
    image = f'{src}.{fmt}'
    tc._run(rig, ['qemu-img', 'convert', '-f', 'raw', '-O', fmt, src, image])
    _import_file(mgr, rig, 'vm:root', image, fmt)
    top = _record(mgr, 'vm:root')[0]
    rc, out, err = rig.run(['qemu-img', 'compare', '-f', 'raw', '-F',
                            'qcow2', src, top[0]])
    assert rc == 0, (out, err)
    assert not [n for n in _names(rig, mgr, 'vm:root') if n.startswith('i')]


def _hostile(rig, outside_dir, kind):
    path = f'{outside_dir}/hostile-{kind}.qcow2'
    if kind == 'backing':
        tc._run(rig, ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b',
                      f'{outside_dir}/secret', '-F', 'raw', path, '1M'])
    else:
        tc._run(rig, ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
                      f'data_file={outside_dir}/secret,data_file_raw=on',
                      path, '1M'])
    # Whole sectors, as a raw import into a qcow2 volume must be.
    tc._run(rig, ['truncate', '-s', '256K', path])
    return path


@pytest.mark.parametrize('kind', ['backing', 'data_file'])
def test_hostile_imports_change_nothing(pool, rig, outside_dir, kind):
    from volsep.drivers import errors
    mgr, base_dir = pool
    tc._layered(mgr, rig, 'vm:root', 2)
    before = _unchanged(rig, base_dir, mgr, 'vm:root')
    image = _hostile(rig, outside_dir, kind)
    with pytest.raises(errors.UnsafeImage):
        _import_file(mgr, rig, 'vm:root', image, 'qcow2')
    # Declared raw, the same bytes are only data: never followed.
    _import_file(mgr, rig, 'vm:root', image, 'raw')
    top = _record(mgr, 'vm:root')[0]
    assert rig.read(tc._guest_view(rig, base_dir, [top])) == rig.read(image)
    with pytest.raises(errors.InvalidArgument):   # not whole sectors
        mgr.import_begin('vm:root', MiB + 1)
    assert len(_record(mgr, 'vm:root')) == len(before[1]) + 1


@pytest.mark.parametrize('kind', ['backing', 'data_file'])
def test_root_side_refuses_a_hostile_upload(pool, rig, outside_dir, kind):
    """A compromised frontend skips its own checks and hands the root side
    a hostile upload directly: the root side inspects its frozen copy."""
    from volsep.privileged import chain as root_chain
    from volsep.privileged import errors as root_errors
    from volsep.privileged import files
    mgr, base_dir = pool
    record = tc._layered(mgr, rig, 'vm:root', 2)
    volume_dir = os.path.dirname(record[0][0])
    data = rig.read(_hostile(rig, outside_dir, kind))
    upload = f'{volume_dir}/i.qcow2'
    files.create(upload, len(data))
    files.write_at(upload, 0, data)
    before = tc._tree(rig, base_dir)
    with pytest.raises(root_errors.UnsafeImage):
        root_chain.import_image(record, upload, 'qcow2',
                                f'{volume_dir}/L9.qcow2')
    assert tc._tree(rig, base_dir) == before
    assert not rig.files_containing(volume_dir, b'host secret')


def test_short_or_failed_imports_change_nothing(pool, rig):
    from volsep.drivers import errors
    mgr, base_dir = pool
    tc._layered(mgr, rig, 'vm:root', 2)
    before = _unchanged(rig, base_dir, mgr, 'vm:root')
    mgr.import_begin('vm:root', 2 * MiB, force=True)
    mgr.import_write('vm:root', 0, b'x' * MiB)       # the stream ends here
    mgr.import_end('vm:root', False)
    assert _unchanged(rig, base_dir, mgr, 'vm:root') == before
    mgr.import_begin('vm:root', MiB, 'qcow2')
    mgr.import_write('vm:root', 0, b'not a qcow2 image' * 100)
    with pytest.raises(errors.VolsepError):
        mgr.import_end('vm:root', True)
    assert _unchanged(rig, base_dir, mgr, 'vm:root') == before
    with pytest.raises(errors.InvalidArgument):
        mgr.import_end('vm:root', True)               # none pending
    mgr.import_begin('vm:root', MiB, force=True)
    with pytest.raises(errors.VolumeBusy):
        mgr.import_begin('vm:root', MiB, force=True)
    with pytest.raises(errors.VolumeBusy):
        mgr.revert('vm:root')
    mgr.import_end('vm:root', False)
    with pytest.raises(errors.InvalidArgument):
        mgr.import_begin('vm:root', 2 * MiB, 'iso')
    assert _unchanged(rig, base_dir, mgr, 'vm:root') == before


# -- revert ----------------------------------------------------------------

def test_revert_to_every_revision_and_back(pool, rig, tmp_path):
    mgr, base_dir = pool
    record = tc._layered(mgr, rig, 'vm:root', 4, base_fmt='raw')
    views = {tc_gen(path): tc._guest_view(rig, base_dir, record[i:])
             for i, (path, _) in enumerate(record)}
    ids = [r['id'] for r in mgr.revisions('vm:root')]
    assert ids == sorted(views)[:-1]
    current = tc_gen(record[0][0])
    mgr.set_volume('vm:root', 'revisions_to_keep', 10)
    for target in reversed(ids):
        info = mgr.revert('vm:root', target)
        after = _record(mgr, 'vm:root')
        _compare(rig, views[target], after[0][0], 'qcow2')
        assert info['size'] == 4 * MiB
        new_ids = [r['id'] for r in mgr.revisions('vm:root')]
        assert new_ids[-1] == current           # the state reverted from
        assert tc_gen(after[0][0]) > max(new_ids)   # ids only grow
        current = tc_gen(after[0][0])
    # The undo: back to the state before the first revert.
    mgr.revert('vm:root', tc_gen(record[0][0]))
    _compare(rig, views[tc_gen(record[0][0])],
             _record(mgr, 'vm:root')[0][0], 'qcow2')
    # The next start presents the reverted data.
    overlay = mgr.start_domain('vm')[0]['path']
    _compare(rig, views[tc_gen(record[0][0])], overlay, 'qcow2')
    mgr.stop_domain('vm')


def tc_gen(path):
    from volsep.drivers import qcow2
    return qcow2.generation(path)


def test_revert_without_a_revision_uses_the_latest_and_prunes(pool, rig):
    mgr, base_dir = pool
    record = tc._layered(mgr, rig, 'vm:root', 3)
    mgr.set_volume('vm:root', 'revisions_to_keep', 1)   # merges the base
    record = _record(mgr, 'vm:root')
    latest = tc._guest_view(rig, base_dir, record[1:])
    top = tc._guest_view(rig, base_dir, record)
    mgr.revert('vm:root')
    after = _record(mgr, 'vm:root')
    _compare(rig, latest, after[0][0], 'qcow2')
    assert len(after) == 2 and after[1] == record[0]   # one revision kept
    assert [r['id'] for r in mgr.revisions('vm:root')] == \
        [tc_gen(record[0][0])]
    _compare(rig, top, tc._guest_view(rig, base_dir, after[1:]), 'raw')


def test_a_running_snapshot_keeps_reading_while_its_source_changes(pool,
                                                                   rig):
    mgr, base_dir = pool
    record = tc._layered(mgr, rig, 'src:root', 2)
    mgr.set_volume('src:root', 'revisions_to_keep', 0)   # one layer
    record = _record(mgr, 'src:root')
    ref = tc._guest_view(rig, base_dir, record)
    mgr.create_volume('snap:root', 'p', kind='snapshot', source='src:root')
    overlay = mgr.start_domain('snap')[0]['path']
    src = _raw(rig, base_dir, 4 * MiB, [(0, 0x31)])
    _import_file(mgr, rig, 'src:root', src)
    mgr.resize('src:root', 8 * MiB)
    # The layer the snapshot reads is kept, not merged away.
    assert record[0] in _record(mgr, 'src:root')
    _compare(rig, ref, overlay, 'qcow2')
    assert mgr.volume_info('snap:root')['is_outdated']
    mgr.stop_domain('snap')
    mgr.resize('src:root', 8 * MiB)                    # now merges
    after = _record(mgr, 'src:root')
    assert len(after) == 1
    # The next snapshot starts from the source's latest content.
    overlay = mgr.start_domain('snap')[0]['path']
    _compare(rig, tc._guest_view(rig, base_dir, after), overlay, 'qcow2')
    mgr.stop_domain('snap')


def test_bad_reverts_change_nothing(pool, rig):
    from volsep.drivers import errors
    mgr, base_dir = pool
    tc._layered(mgr, rig, 'vm:root', 3)
    mgr.create_volume('one:root', 'p', MiB)
    before = _unchanged(rig, base_dir, mgr, 'vm:root')
    for bad in (99, 0, tc_gen(mgr.volume_info('vm:root')['path'])):
        with pytest.raises(errors.RevisionNotFound):
            mgr.revert('vm:root', bad)
    for bad in (-1, '1/2', '../1', True, 1.5, '9' * 30):
        with pytest.raises(errors.InvalidArgument):
            mgr.revert('vm:root', bad)
    with pytest.raises(errors.RevisionNotFound):
        mgr.revert('one:root')
    assert _unchanged(rig, base_dir, mgr, 'vm:root') == before
    mgr.start_domain('vm')
    running = tc._tree(rig, base_dir)
    with pytest.raises(errors.VolumeBusy):
        mgr.revert('vm:root')
    assert tc._tree(rig, base_dir) == running
    mgr.stop_domain('vm')


def test_root_side_revert_refuses_bad_requests(pool, rig, outside_dir):
    from volsep.privileged import chain as root_chain
    from volsep.privileged import errors as root_errors
    mgr, base_dir = pool
    record = tc._layered(mgr, rig, 'vm:root', 3)
    volume_dir = os.path.dirname(record[0][0])
    before = tc._tree(rig, base_dir)
    new = f'{volume_dir}/L9.qcow2'
    for index in (0, 3, -1, '1', True):
        with pytest.raises(root_errors.InvalidArgument):
            root_chain.revert(record, index, new)
    with pytest.raises(root_errors.ChainMismatch):     # not a chain
        root_chain.revert([record[0], record[2]], 1, new)
    with pytest.raises(root_errors.PrivilegedError):   # never replaces
        root_chain.revert(record, 1, record[1][0])
    mgr.create_volume('other:root', 'p', MiB)
    other_dir = os.path.dirname(mgr.volume_info('other:root')['path'])
    before = tc._tree(rig, base_dir)
    for elsewhere in (f'{outside_dir}/L9.qcow2', f'{other_dir}/L9.qcow2',
                      f'{volume_dir}/../L9.qcow2'):
        with pytest.raises(root_errors.InvalidArgument):
            root_chain.revert(record, 1, elsewhere)
        with pytest.raises(root_errors.InvalidArgument):
            root_chain.copy_chain(record, record[1:], elsewhere)
        with pytest.raises(root_errors.InvalidArgument):
            root_chain.export(record, 'raw', elsewhere)
    # An import reads only the volume's own upload.
    with pytest.raises(root_errors.InvalidArgument):
        root_chain.import_image(record, mgr.volume_info('other:root')['path'],
                                'raw', new)
    assert tc._tree(rig, base_dir) == before


def test_libvirt_probes_the_chain_after_revert_and_resize(pool, rig,
                                                          tmp_path,
                                                          libvirtd):
    mgr, _ = pool
    domain = f'oracle{uuid.uuid4().hex[:8]}'
    address = f'{domain}:root'
    tc._layered(mgr, rig, address, 3, base_fmt='raw')
    mgr.revert(address, tc_gen(_record(mgr, address)[2][0]))
    assert tc.libvirt_probes(mgr, rig, tmp_path, domain) == \
        _record(mgr, address)
    mgr.resize(address, 8 * MiB)
    assert tc.libvirt_probes(mgr, rig, tmp_path, domain) == \
        _record(mgr, address)


# -- resize ----------------------------------------------------------------

def test_grow_and_forced_shrink(pool, rig):
    from volsep.drivers import errors
    mgr, base_dir = pool
    record = tc._layered(mgr, rig, 'vm:root', 2)
    ref = tc._guest_view(rig, base_dir, record)
    digests = {p: rig.sha256(p) for p, _ in record}
    assert mgr.resize('vm:root', 8 * MiB)['size'] == 8 * MiB
    after = _record(mgr, 'vm:root')
    assert after[1:] == record
    assert {p: rig.sha256(p) for p, _ in record} == digests  # not in place
    grown = tc._guest_view(rig, base_dir, after)
    assert rig.lstat(grown)['size'] == 8 * MiB
    assert rig.read(grown, 0, 4 * MiB) == rig.read(ref)
    assert rig.read(grown, 4 * MiB) == bytes(4 * MiB)
    before = _unchanged(rig, base_dir, mgr, 'vm:root')
    with pytest.raises(errors.InvalidArgument):
        mgr.resize('vm:root', MiB)                       # not forced
    for bad in (-1, 1.5, '1G', 10 ** 19, True):
        with pytest.raises(errors.InvalidArgument):
            mgr.resize('vm:root', bad)
    assert _unchanged(rig, base_dir, mgr, 'vm:root') == before
    assert mgr.resize('vm:root', MiB, force=True)['size'] == MiB
    shrunk = tc._guest_view(rig, base_dir, _record(mgr, 'vm:root'))
    assert rig.read(shrunk) == rig.read(ref, 0, MiB)
    # Grown again, the tail reads zeros, not the data the shrink dropped.
    mgr.resize('vm:root', 4 * MiB)
    regrown = tc._guest_view(rig, base_dir, _record(mgr, 'vm:root'))
    assert rig.read(regrown) == rig.read(ref, 0, MiB) + bytes(3 * MiB)
    # Pruning by merging keeps every view (each pull is a safe rebase).
    mgr.set_volume('vm:root', 'revisions_to_keep', 0)
    assert len(_record(mgr, 'vm:root')) == 1
    _compare(rig, regrown, _record(mgr, 'vm:root')[0][0], 'qcow2')


def test_no_commit_brings_back_what_a_forced_shrink_removed(pool, rig):
    from volsep.drivers import errors
    mgr, base_dir = pool
    tc._layered(mgr, rig, 'vm:root', 2)
    top = _record(mgr, 'vm:root')[0][0]
    tc._write(rig, top, 'qcow2', 2 * MiB, 0x44)
    mgr.resize('vm:root', MiB, force=True)
    record = _record(mgr, 'vm:root')
    ref = tc._guest_view(rig, base_dir, record)
    before = _unchanged(rig, base_dir, mgr, 'vm:root')
    for top_index, base_index in ((0, 1), (0, 2)):
        with pytest.raises(errors.InvalidArgument) as refused:
            mgr.chain_commit('vm:root', top_index, base_index)
        assert 'smaller' in str(refused.value)
    assert _unchanged(rig, base_dir, mgr, 'vm:root') == before
    mgr.chain_commit('vm:root', 1, 2)      # no shrink in this range
    mgr.chain_pull('vm:root', 0, 2)        # a pull is safe
    after = _record(mgr, 'vm:root')
    assert len(after) == 1
    _compare(rig, ref, after[0][0], 'qcow2')


def test_resize_refusals(pool, rig):
    from volsep.drivers import errors
    mgr, base_dir = pool
    tc._layered(mgr, rig, 'vm:root', 1)
    mgr.create_volume('snap:root', 'p', kind='snapshot', source='vm:root')
    mgr.create_volume('vm:tmp', 'p', MiB, kind='volatile')
    before = _unchanged(rig, base_dir, mgr, 'vm:root')
    with pytest.raises(errors.InvalidArgument):
        mgr.resize('snap:root', 8 * MiB)
    with pytest.raises(errors.InvalidArgument):
        mgr.resize('vm:root', 8 * MiB + 1)
    assert _unchanged(rig, base_dir, mgr, 'vm:root') == before
    mgr.start_domain('vm')
    running = _unchanged(rig, base_dir, mgr, 'vm:root')
    with pytest.raises(errors.VolumeBusy):
        mgr.resize('vm:root', 8 * MiB)
    with pytest.raises(errors.VolumeBusy):
        mgr.resize('vm:tmp', 8 * MiB)
    assert _unchanged(rig, base_dir, mgr, 'vm:root') == running
    mgr.stop_domain('vm')
    mgr.resize('vm:tmp', 2 * MiB)              # taken at the next start
    overlay = mgr.start_domain('vm')[1]['path']
    info = tc._run(rig, ['qemu-img', 'info', '-U', '-f', 'qcow2', overlay])
    assert f'{2 * MiB} bytes' in info
    mgr.stop_domain('vm')


# -- clone -----------------------------------------------------------------

def test_clone_is_a_flattened_copy_independent_of_the_source(pool, rig):
    mgr, base_dir = pool
    source = tc._layered(mgr, rig, 'src:root', 3)
    ref = tc._guest_view(rig, base_dir, source)
    target = tc._layered(mgr, rig, 'dst:root', 2)
    target_old = tc._guest_view(rig, base_dir, target)
    mgr.resize('dst:root', 2 * MiB, force=True)
    info = mgr.clone('src:root', 'dst:root')
    assert info['size'] == 4 * MiB
    after = _record(mgr, 'dst:root')
    assert not {p for p, _ in after} & {p for p, _ in source}
    _compare(rig, ref, after[0][0], 'qcow2')
    assert _record(mgr, 'src:root') == source
    # The source merges all its layers away and writes on: the clone
    # keeps what it copied.
    mgr.set_volume('src:root', 'revisions_to_keep', 0)
    overlay = mgr.start_domain('src')[0]['path']
    tc._write(rig, overlay, 'qcow2', 0, 0x7e)
    mgr.stop_domain('src')
    assert len(_record(mgr, 'src:root')) == 1
    _compare(rig, ref, _record(mgr, 'dst:root')[0][0], 'qcow2')
    # The clone's old content is a revision of it.
    ids = [r['id'] for r in mgr.revisions('dst:root')]
    mgr.revert('dst:root', ids[-2])
    _compare(rig, target_old, _record(mgr, 'dst:root')[0][0], 'qcow2')


def test_clone_across_pools(pool, rig, tmp_path):
    from tests import storage_helpers as h
    from volsep.drivers import errors
    mgr, base_dir = pool
    other = f'{base_dir}/files'
    mgr.add_pool('f', 'file', [('dir_path', other)])
    mgr.create_volume('raw:root', 'f', 3 * MiB)
    path = mgr.start_domain('raw')[0]['path']
    h.vm_write(rig, path, MiB, b'\x42' * KiB64)
    mgr.stop_domain('raw')
    tc._layered(mgr, rig, 'vm:root', 2)
    mgr.clone('raw:root', 'vm:root')
    _compare(rig, mgr.volume_info('raw:root')['path'],
             _record(mgr, 'vm:root')[0][0], 'qcow2')
    before = _unchanged(rig, base_dir, mgr, 'vm:root')
    with pytest.raises(errors.NotSupported):
        mgr.clone('vm:root', 'raw:root')
    assert _unchanged(rig, base_dir, mgr, 'vm:root') == before


def test_bad_clones_change_nothing(pool, rig, outside_dir):
    from volsep.drivers import errors
    from volsep.privileged import chain as root_chain
    from volsep.privileged import errors as root_errors
    mgr, base_dir = pool
    source = tc._layered(mgr, rig, 'src:root', 2)
    target = tc._layered(mgr, rig, 'dst:root', 1)
    before = _unchanged(rig, base_dir, mgr, 'dst:root')
    with pytest.raises(errors.InvalidArgument):
        mgr.clone('dst:root', 'dst:root')
    mgr.create_volume('dst:tmp', 'p', MiB, kind='volatile')
    with pytest.raises(errors.InvalidArgument):
        mgr.clone('dst:tmp', 'dst:root')
    with pytest.raises(errors.InvalidArgument):
        mgr.clone('src:root', 'dst:tmp')
    assert _unchanged(rig, base_dir, mgr, 'dst:root') == before
    mgr.start_domain('dst')
    running = _unchanged(rig, base_dir, mgr, 'dst:root')
    with pytest.raises(errors.VolumeBusy):
        mgr.clone('src:root', 'dst:root')
    assert _unchanged(rig, base_dir, mgr, 'dst:root') == running
    mgr.stop_domain('dst')
    # A compromised frontend names a source whose header leads outside.
    tc._run(rig, ['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b',
                  f'{outside_dir}/secret', '-F', 'raw', source[0][0]])
    volume_dir = os.path.dirname(target[0][0])
    before = _unchanged(rig, base_dir, mgr, 'dst:root')
    with pytest.raises(root_errors.ChainMismatch):
        root_chain.copy_chain(target, [source[0]], f'{volume_dir}/L9.qcow2')
    with pytest.raises(root_errors.ChainMismatch):
        root_chain.copy_chain(target, source, f'{volume_dir}/L9.qcow2')
    with pytest.raises(errors.ChainMismatch):
        mgr.clone('src:root', 'dst:root')
    assert not rig.files_containing(volume_dir, b'host secret')
    assert _unchanged(rig, base_dir, mgr, 'dst:root') == before
