"""Backing chains: the qcow2 driver, chain validation and correction,
offline commit and pull, and libvirt XML checked by libvirt itself.

The libvirt oracle: a real libvirtd (started here as root) is given
volsep's disk XML with every <backingStore> removed, starts a TCG domain,
and the chain it probes on its own, read back from the live XML, must equal
volsep's record.
"""

import json
import os
import struct
import time
import uuid

import pytest
from lxml import etree

from tests import service_helpers as sh
from tests import storage_helpers as h

MiB = 1 << 20
KiB64 = 64 << 10
QCOW2_POOL = ('qcow2-xfs', 'qcow2', 'xfs', [])
LIBVIRT_DIR = f'{os.environ.get("VOLSEP_TEST_WORK", "")}/libvirt'
# The tests' own libvirtd (tests/private-libvirtd), never the host's.
VIRSH = ['virsh', '-q', '-c',
         f'qemu:///system?socket={LIBVIRT_DIR}/run/libvirt-sock']
_BACKING_FORMAT_EXTENSION = 0xE2792ACA


# -- helpers ---------------------------------------------------------------

@pytest.fixture
def pool(tmp_path, rig):
    mgr, base = h.make_manager(h.fresh_state_dir(tmp_path), QCOW2_POOL, rig)
    yield mgr, base
    rig.rmtree(base)


def _run(rig, argv):
    rc, out, err = rig.run(argv)
    assert rc == 0, (argv, out, err)
    return out.decode()


def _write(rig, path, fmt, offset, pattern):
    _run(rig, ['qemu-io', '-f', fmt, '-c',
               f'write -P {pattern} {offset} {KiB64}', path])


def _layered(mgr, rig, address, layers, base_fmt='qcow2'):
    """A stopped persistent volume whose committed chain has ``layers``
    layers, each holding its own data at its own offset and at offset 0."""
    domain = address.split(':')[0]
    mgr.create_volume(address, 'p', 4 * MiB, revisions_to_keep=layers,
                      fmt=base_fmt)
    base = mgr.volume_info(address)['path']
    _write(rig, base, base_fmt, 0, 0x10)
    for i in range(1, layers):
        overlay = mgr.start_domain(domain)[0]['path']
        _write(rig, overlay, 'qcow2', 0, 0x10 + i)
        _write(rig, overlay, 'qcow2', i * KiB64, 0x10 + i)
        mgr.stop_domain(domain)
    record = [[layer['path'], layer['format']]
              for layer in mgr.chain_validate(address)]
    assert len(record) == layers
    return record


def _guest_view(rig, base_dir, record):
    """The content a guest sees through the chain, as a raw file."""
    ref = f'{base_dir}/ref-{uuid.uuid4().hex[:8]}.raw'
    _run(rig, ['qemu-img', 'convert', '-f', record[0][1], '-O', 'raw',
               record[0][0], ref])
    return ref


def _same_view(rig, ref, record):
    rc, out, err = rig.run(['qemu-img', 'compare', '-f', 'raw', '-F',
                            record[0][1], ref, record[0][0]])
    assert rc == 0, (out, err)


def _tree(rig, base_dir):
    return {k: v[4] for k, v in rig.tree(base_dir).items() if v[4]}


# -- the qcow2 driver ------------------------------------------------------

def test_stop_commits_an_overlay_and_prunes_by_merging(pool, rig):
    mgr, base_dir = pool
    mgr.create_volume('vm:root', 'p', 4 * MiB, revisions_to_keep=2,
                      fmt='raw')
    views = []
    for i in range(5):
        started = mgr.start_domain('vm')[0]
        assert started['format'] == 'qcow2'
        assert started['path'].endswith('/w.qcow2')
        _write(rig, started['path'], 'qcow2', i * KiB64, 0x20 + i)
        mgr.stop_domain('vm')
        record = [[x['path'], x['format']] for x in mgr.chain_validate(
            'vm:root')]
        views.append(_guest_view(rig, base_dir, record))
    revisions = mgr.revisions('vm:root')
    assert [r['id'] for r in revisions] == [4, 5]   # oldest merged away
    assert len(record) == 3
    # Merging the oldest revisions into the layer above kept every view.
    _same_view(rig, views[-1], record)
    volume_dir = os.path.dirname(record[0][0])
    assert sorted(os.path.basename(p) for p in _tree(rig, volume_dir)) == \
        sorted(os.path.basename(p) for p, _ in record)


def test_snapshot_overlays_its_source_and_keeps_layers_it_reads(pool, rig):
    mgr, base_dir = pool
    _layered(mgr, rig, 'src:root', 2)
    mgr.set_volume('src:root', 'revisions_to_keep', 0)   # merges L1 away
    assert len(mgr.chain_validate('src:root')) == 1
    mgr.create_volume('snap:root', 'p', kind='snapshot', source='src:root')
    overlay = mgr.start_domain('snap')[0]['path']
    assert overlay.endswith('/w@2.qcow2')
    mgr.start_domain('src')
    mgr.stop_domain('src')            # would merge L2 away: snap reads it
    assert len(mgr.chain_validate('src:root')) == 2
    assert mgr.volume_info('snap:root')['is_outdated']
    disk = etree.fromstring(mgr.disk_xml('snap'))
    sources = [s.get('file') for s in disk.iter('source')]
    assert sources[0] == overlay and len(sources) == 2
    assert rig.lstat(sources[1])['size'] > 0  # still there to be read
    mgr.stop_domain('snap')
    mgr.start_domain('src')
    mgr.stop_domain('src')            # now nothing reads it: merged
    assert len(mgr.chain_validate('src:root')) == 1


def test_bad_chain_requests_change_nothing(pool, rig):
    mgr, base_dir = pool
    _layered(mgr, rig, 'vm:root', 3)
    before = _tree(rig, base_dir)
    from volsep.drivers import errors
    for top, base in ((0, 0), (2, 1), (-1, 2), (0, 3), (0, 9), ('0', 1),
                      (True, 2)):
        with pytest.raises(errors.InvalidArgument):
            mgr.chain_commit('vm:root', top, base)
    with pytest.raises(errors.InvalidArgument):
        mgr.chain_pull('vm:root', 1, 5)
    assert _tree(rig, base_dir) == before
    mgr.start_domain('vm')
    with pytest.raises(errors.VolumeBusy):
        mgr.chain_commit('vm:root', 0, 1)
    mgr.stop_domain('vm')
    assert len(mgr.chain_validate('vm:root')) == 4
    mgr.create_volume('plain:root', 'p', MiB, kind='volatile')
    with pytest.raises(errors.InvalidArgument):
        mgr.chain_validate('plain:root')


# -- offline commit and pull -----------------------------------------------

COMMITS = [(t, b) for b in range(1, 4) for t in range(b)]
PULLS = [(t, b) for b in range(1, 5) for t in range(b)]


@pytest.mark.parametrize('top,base', COMMITS)
def test_commit_at_every_index_keeps_the_content(pool, rig, top, base):
    mgr, base_dir = pool
    record = _layered(mgr, rig, 'vm:root', 4, base_fmt='raw')
    ref = _guest_view(rig, base_dir, record)
    after = mgr.chain_commit('vm:root', top, base)
    expected = record[:top] + record[base:]
    assert after == expected
    assert [[x['path'], x['format']]
            for x in mgr.chain_validate('vm:root')] == expected
    _same_view(rig, ref, expected)
    for path, _ in record[top:base]:
        assert not os.path.exists(path)


@pytest.mark.parametrize('top,base', PULLS)
def test_pull_at_every_index_keeps_the_content(pool, rig, top, base):
    mgr, base_dir = pool
    record = _layered(mgr, rig, 'vm:root', 4)
    ref = _guest_view(rig, base_dir, record)
    after = mgr.chain_pull('vm:root', top, base)
    expected = record[:top + 1] + record[base:]
    assert after == expected
    assert [[x['path'], x['format']]
            for x in mgr.chain_validate('vm:root')] == expected
    _same_view(rig, ref, expected)


# -- hostile chains --------------------------------------------------------

def _patch_backing_format(rig, path, new_type=None, new_format=None):
    """Rewrite the backing-format header extension of a qcow2 layer in
    place: its type (to hide it) or its text (within its 8-byte slot)."""
    head = rig.read(path, 0, 65536)
    (header_length,) = struct.unpack_from('>I', head, 100)
    offset = header_length
    while True:
        kind, length = struct.unpack_from('>II', head, offset)
        assert kind != 0, 'no backing format extension'
        if kind == _BACKING_FORMAT_EXTENSION:
            break
        offset += 8 + length + (-length % 8)
    if new_type is not None:
        rig.pwrite(path, offset, struct.pack('>I', new_type))
    if new_format is not None:
        data = new_format.encode()
        assert len(data) <= length + (-length % 8)
        rig.pwrite(path, offset + 4, struct.pack('>I', len(data)) +
                   data.ljust(length + (-length % 8), b'\0'))


def _refused_everywhere(mgr, address):
    from volsep.drivers import errors
    record = mgr._config(address).chain[:]
    with pytest.raises(errors.ChainMismatch) as validation:
        mgr.chain_validate(address)
    with pytest.raises(errors.VolsepError) as correction:
        mgr.chain_correct(address)
    assert correction.value.error_class in ('ChainMismatch', 'UnsafeImage',
                                            'StorageError')
    assert mgr._config(address).chain == record
    return str(validation.value), str(correction.value)


def test_forged_qcow2_header_inside_a_raw_base(pool, rig, outside_dir):
    mgr, _ = pool
    record = _layered(mgr, rig, 'vm:root', 2, base_fmt='raw')
    # The guest wrote a qcow2 header naming a host file into its raw disk.
    rc, _, err = rig.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b',
                          f'{outside_dir}/secret', '-F', 'raw',
                          f'{outside_dir}/forged.qcow2', '4M'])
    assert rc == 0, err
    rig.pwrite(record[1][0], 0, rig.read(f'{outside_dir}/forged.qcow2'))
    # Read as the raw layer it was recorded as, it is just data.
    assert [[x['path'], x['format']]
            for x in mgr.chain_validate('vm:root')] == record
    # Flip the overlay's backing format to qcow2 and it would be followed.
    _patch_backing_format(rig, record[0][0], new_format='qcow2')
    validation, correction = _refused_everywhere(mgr, 'vm:root')
    assert "format 'qcow2'" in validation and "format 'raw'" in validation
    assert 'secret' in correction or 'unsafe' in correction.lower()


def test_backing_file_outside_the_pool(pool, rig, outside_dir):
    mgr, _ = pool
    record = _layered(mgr, rig, 'vm:root', 2)
    _run(rig, ['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b',
               f'{outside_dir}/secret', '-F', 'raw', record[0][0]])
    validation, correction = _refused_everywhere(mgr, 'vm:root')
    assert 'secret' in validation
    assert 'outside the pool' in correction


def test_missing_backing_format(pool, rig):
    mgr, _ = pool
    record = _layered(mgr, rig, 'vm:root', 2)
    _patch_backing_format(rig, record[0][0], new_type=0x0badf00d)
    validation, correction = _refused_everywhere(mgr, 'vm:root')
    assert 'None' in validation
    assert 'without a backing format' in correction


def test_cycle(pool, rig):
    mgr, _ = pool
    record = _layered(mgr, rig, 'vm:root', 2)
    _run(rig, ['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b', record[0][0],
               '-F', 'qcow2', record[1][0]])
    validation, correction = _refused_everywhere(mgr, 'vm:root')
    assert 'cycle' in correction


def test_moved_layer(pool, rig):
    mgr, _ = pool
    record = _layered(mgr, rig, 'vm:root', 3)
    rig.rename(record[1][0], record[1][0] + '.moved')
    validation, _ = _refused_everywhere(mgr, 'vm:root')
    assert 'missing' in validation


def test_correct_adopts_a_consistent_disk(pool, rig):
    """After a commit done behind volsep's back (qemu-img commit + rebase),
    correction rebuilds the record from the headers."""
    mgr, _ = pool
    record = _layered(mgr, rig, 'vm:root', 3)
    _run(rig, ['qemu-img', 'commit', '-q', '-f', 'qcow2', '-d',
               record[1][0]])
    _run(rig, ['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b', record[2][0],
               '-F', 'qcow2', record[0][0]])
    from volsep.drivers import errors
    with pytest.raises(errors.ChainMismatch):
        mgr.chain_validate('vm:root')
    result = mgr.chain_correct('vm:root')
    assert result['after'] == [record[0], record[2]]
    assert [[x['path'], x['format']]
            for x in mgr.chain_validate('vm:root')] == [record[0], record[2]]


# -- libvirt ---------------------------------------------------------------

@pytest.fixture(scope='module')
def libvirtd():
    from tests import rig
    host_config = rig.tree('/etc/libvirt')
    log = f'{os.environ["VOLSEP_TEST_WORK"]}/libvirtd.log'
    pid = rig.spawn(['/bin/bash', f'{os.path.dirname(__file__)}/'
                     f'private-libvirtd', LIBVIRT_DIR],
                    {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin'}, log)
    deadline = time.monotonic() + 30
    while rig.run(VIRSH + ['version'])[0] != 0:
        assert time.monotonic() < deadline, rig.read(log).decode()
        time.sleep(0.2)
    yield
    rig.kill(pid, 15)
    rig.wait(pid, 60)
    # The tests' libvirtd has its own configuration: the host's is
    # neither changed nor needed.
    assert rig.tree('/etc/libvirt') == host_config


def _validate_xml(rig, tmp_path, text, kind):
    path = tmp_path / f'{kind}-{uuid.uuid4().hex[:6]}.xml'
    path.write_text(text)
    rc, out, err = rig.run(['virt-xml-validate', str(path), kind])
    assert rc == 0, (text, out, err)
    return str(path)


def _live_chain(xml):
    disk = etree.fromstring(xml).find('devices/disk')
    chain = [[disk.find('source').get('file'),
              disk.find('driver').get('type')]]
    store = disk.find('backingStore')
    while store is not None and store.find('source') is not None:
        chain.append([store.find('source').get('file'),
                      store.find('format').get('type')])
        store = store.find('backingStore')
    return chain


def libvirt_probes(mgr, rig, tmp_path, domain):
    """The chain libvirt probes on its own for the domain's one disk, given
    volsep's disk XML without any <backingStore>."""
    full = mgr.disk_xml(domain, full=True)
    path = _validate_xml(rig, tmp_path, full, 'domain')
    _run(rig, VIRSH + ['define', '--validate', path])
    _run(rig, VIRSH + ['undefine', domain])
    bare = etree.fromstring(full)
    for store in bare.iter('backingStore'):
        if store.getparent().tag == 'disk':
            store.getparent().remove(store)
    assert bare.find('.//backingStore') is None
    bare_path = tmp_path / f'bare-{uuid.uuid4().hex[:6]}.xml'
    bare_path.write_bytes(etree.tostring(bare))
    _run(rig, VIRSH + ['define', str(bare_path)])
    try:
        _run(rig, VIRSH + ['start', domain])
        live = _run(rig, VIRSH + ['dumpxml', domain])
        _run(rig, VIRSH + ['destroy', domain])
    finally:
        rig.run(VIRSH + ['undefine', domain])
    return _live_chain(live)


@pytest.mark.parametrize('layers', [1, 2, 4])
@pytest.mark.parametrize('base_fmt', ['raw', 'qcow2'])
def test_libvirt_probes_the_chain_volsep_records(pool, rig, tmp_path,
                                                 libvirtd, layers, base_fmt):
    mgr, _ = pool
    domain = f'oracle{uuid.uuid4().hex[:8]}'
    record = _layered(mgr, rig, f'{domain}:root', layers, base_fmt)
    assert libvirt_probes(mgr, rig, tmp_path, domain) == record


def test_cli_xml_commands_validate(rig, tmp_path):
    from tests import rig as rig_module
    state_dir = sh.fresh_state_dir()
    svc = sh.Service(state_dir, policy={'rules': [{
        'users': ['root', os.environ.get('VOLSEP_TEST_USER', 'volsep-test'),
                  'volsep'], 'allow': ['*']}]}).start()
    try:
        svc.json('pool', 'add', 'q', 'qcow2', '-o',
                 f'dir_path={state_dir}/pools/q')
        svc.json('volume', 'create', 'vm:root', '--pool', 'q', '--size',
                 '8M', '--format', 'raw')
        svc.json('domain', 'start', 'vm')
        svc.json('domain', 'stop', 'vm')
        chain = svc.json('chain', 'validate', 'vm:root')
        assert [c['format'] for c in chain] == ['qcow2', 'raw']
        for args, kind in ((('domain', 'disk-xml', 'vm', '--full'),
                            'domain'),
                           (('volume', 'xml', 'vm:root'), 'storagevol'),
                           (('pool', 'xml', 'q'), 'storagepool')):
            rc, out, err = svc.cli(*args)
            assert rc == 0, err
            _validate_xml(rig, tmp_path, out, kind)
        rc, out, _ = svc.cli('domain', 'disk-xml', 'vm')
        assert out.count('<backingStore') == 2
        rc, out, err = svc.cli('chain', 'commit', 'vm:root', '--top', '0',
                               '--base', '1', '-f', 'json')
        assert rc == 0, err
        assert [c['format'] for c in json.loads(out)] == ['raw']
        rc, out, err = svc.cli('chain', 'pull', 'vm:root', '--top', '0',
                               '--base', '7')
        assert rc == 1 and err.startswith('volsep: InvalidArgument:'), err
    finally:
        svc.stop()
        rig_module.rmtree(state_dir)


def test_disk_xml_for_block_and_rbd_sources_validates(rig, tmp_path):
    """The XML builder's block and network (rbd) forms, for drivers on
    block devices and Ceph, pass libvirt's schema; no such driver exists
    yet, so the chains here are written out by hand."""
    from volsep.frontend import libvirt_xml
    rbd = {'type': 'network', 'protocol': 'rbd', 'name': 'vms/top',
           'hosts': [['127.0.0.1', 6789]]}
    disks = [
        libvirt_xml.disk([[rbd, 'raw'], [dict(rbd, name='vms/base'), 'raw']],
                         'vda'),
        libvirt_xml.disk([[{'type': 'block', 'dev': '/dev/vg/top'}, 'qcow2'],
                          [{'type': 'block', 'dev': '/dev/vg/base'}, 'raw'],
                          ['/var/lib/images/base.qcow2', 'qcow2']], 'vdb',
                         read_only=True),
    ]
    text = libvirt_xml.text(libvirt_xml.domain('mixed', disks))
    _validate_xml(rig, tmp_path, text, 'domain')
    parsed = etree.fromstring(text)
    kinds = [d.get('type') for d in parsed.iter('disk')]
    assert kinds == ['network', 'block']
    stores = [b.get('type') for b in parsed.iter('backingStore')
              if b.get('type')]
    assert stores == ['network', 'block', 'file']
    assert parsed.find('.//source[@protocol="rbd"]/host').get('port') == \
        '6789'


# -- running overlays ------------------------------------------------------

def _repoint_backing(rig, path, new_backing):
    """Rewrite a qcow2 header's backing file name in place, as a
    compromised hypervisor holding the overlay open could."""
    head = rig.read(path, 0, 64)
    offset, length = struct.unpack_from('>QI', head, 8)
    data = new_backing.encode()
    assert len(data) <= length
    rig.pwrite(path, 8, struct.pack('>QI', offset, len(data)))
    rig.pwrite(path, offset, data)


def test_validation_covers_the_running_overlay_of_every_kind(pool, rig):
    """What domain start hands out is what validate checks: a running
    persistent volume's overlay, a running snapshot's overlay over its
    source's layers."""
    mgr, _ = pool
    record = _layered(mgr, rig, 'vm:root', 2)
    mgr.create_volume('snap:root', 'p', kind='snapshot', source='vm:root')
    from volsep.drivers import errors
    with pytest.raises(errors.InvalidArgument, match='not running'):
        mgr.chain_validate('snap:root')
    overlay = mgr.start_domain('vm')[0]['path']
    snap_overlay = mgr.start_domain('snap')[0]['path']
    assert [x['path'] for x in mgr.chain_validate('vm:root')] == \
        [overlay] + [p for p, _ in record]
    assert [x['path'] for x in mgr.chain_validate('snap:root')] == \
        [snap_overlay] + [p for p, _ in record]
    # The overlay now names the base, skipping the top layer.
    _repoint_backing(rig, overlay, record[1][0])
    with pytest.raises(errors.ChainMismatch, match='layer 0'):
        mgr.chain_validate('vm:root')
    _repoint_backing(rig, snap_overlay, record[1][0])
    with pytest.raises(errors.ChainMismatch, match='layer 0'):
        mgr.chain_validate('snap:root')


def test_a_damaged_running_overlay_is_not_committed(pool, rig):
    """Its header overwritten while running: stop refuses and changes
    nothing; listings, info and other volumes keep working."""
    mgr, _ = pool
    from volsep.drivers import errors
    record = _layered(mgr, rig, 'vm:root', 2)
    _layered(mgr, rig, 'other:root', 1)
    overlay = mgr.start_domain('vm')[0]['path']
    volume_dir = overlay.rsplit('/', 1)[0]
    rig.pwrite(overlay, 0, b'\xde\xad' * 256)
    before = rig.tree(volume_dir)
    with pytest.raises(errors.VolsepError, match='nothing was committed'):
        mgr.stop_domain('vm')
    assert rig.tree(volume_dir) == before
    assert mgr._volume(mgr._config('vm:root')).recorded() == record
    listed = {v['vid'] for v in mgr.list_volumes()}
    assert {'vm/root', 'other/root'} <= listed
    info = mgr.volume_info('vm:root')
    assert info['size'] == 4 * MiB
    mgr.start_domain('other')
    mgr.stop_domain('other')
    # Damage to a committed layer is reported by info, not raised.
    top = record[0][0]
    rig.pwrite(top, 0, b'\xde\xad' * 256)
    info = mgr.volume_info('vm:root')
    assert info['damaged'] and info['size'] == 4 * MiB
    assert {'vm/root', 'other/root'} <= {v['vid'] for v in
                                         mgr.list_volumes()}
