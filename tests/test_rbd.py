"""The rbd driver on the real single-node Ceph cluster tests/run starts
(tests/ceph-cluster): two volsep services with separate state
directories act as two hosts sharing one Ceph pool.

Nothing here skips: without the cluster every test fails."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from lxml import etree

from tests import image_corpus as corpus
from tests import service_helpers as sh
from tests import test_crash

MiB = 1 << 20
TEST_USER = os.environ.get('VOLSEP_TEST_USER', 'volsep-test')
EVERYONE = {'rules': [{'users': ['root', TEST_USER, 'volsep'],
                       'allow': ['*']}]}
CEPH = dict(item.split('=', 1)
            for item in os.environ.get('VOLSEP_TEST_CEPH', '').split())
SECRET = '3a5b6c7d-1111-4222-8333-944455556666'


def _root_config(state_dir):
    """Each service's root configuration: its own pool root and audit log,
    and the shared Ceph pool."""
    with open(os.environ['VOLSEP_PRIVILEGED_CONFIG']) as f:
        shared = f.read()
    ceph = [line for line in shared.splitlines()
            if line.startswith('ceph_')]
    assert ceph, 'tests/run wrote no Ceph settings: the cluster is missing'
    return ('[privileged]\n'
            f'allowed_roots = {state_dir}/pools\n'
            f'audit_log = {state_dir}/audit.log\n' + '\n'.join(ceph) + '\n')


class Host:
    """One volsep service standing for one compute host."""

    def __init__(self, rig, name):
        self.rig = rig
        self.name = name
        self.state_dir = sh.fresh_state_dir()
        self.conf = f'{self.state_dir}.privileged.conf'
        rig.write(self.conf, _root_config(self.state_dir).encode(), 0o644)
        self.service = sh.Service(self.state_dir, policy=EVERYONE,
                                  extra_args=['--privileged-config',
                                              self.conf])

    def start(self):
        self.service.start()
        return self

    @property
    def staging_dir(self):
        return f'{self.state_dir}/pools/staging'

    def add_pool(self, pool='ceph'):
        return self.service.json(
            'pool', 'add', pool, 'rbd', '-o', f'ceph_pool={CEPH["pool"]}',
            '-o', f'host_id={self.name}', '-o',
            f'monitors={CEPH["monitors"]}', '-o', f'secret_uuid={SECRET}',
            '-o', f'staging_dir={self.staging_dir}')

    def j(self, *args, input_data=None):
        return self.service.json(*args, input_data=input_data)

    def fails(self, *args, input_data=None):
        rc, out, err = self.service.cli(*args, '-f', 'json',
                                        input_data=input_data)
        assert rc == 1, (args, rc, out, err)
        return json.loads(out)

    def close(self):
        if self.service.pid is not None:
            self.service.stop()
        self.rig.rmtree(self.state_dir)


@pytest.fixture
def hosts(rig):
    assert CEPH.get('pool'), 'no Ceph cluster: run the suite with tests/run'
    made = []

    def make(name):
        made.append(Host(rig, name).start())
        made[-1].add_pool()
        return made[-1]
    yield make
    for host in made:   # stop everything first: ownership crosses hosts
        for vol in _listed(host):
            host.service.cli('domain', 'stop', vol['domain'])
    for host in made:
        try:
            for kind in ('snapshot', 'volatile', 'persistent'):
                for vol in _listed(host):
                    if vol['kind'] == kind:
                        host.service.cli('volume', 'remove',
                                         f'{vol["domain"]}:{vol["name"]}')
        finally:
            host.close()


def _listed(host):
    if host.service.pid is None:
        return []
    rc, out, _ = host.service.cli('volume', 'list', '--pool', 'ceph', '-f',
                                  'json')
    return json.loads(out) if rc == 0 else []


def _domain():
    return f'vm{uuid.uuid4().hex[:8]}'


def _rbd(*args):
    """The rbd CLI as the cluster's admin (root side of the test rig)."""
    from tests import rig
    rc, out, err = rig.run(['/usr/bin/rbd', '-c', CEPH['conf'],
                            '--id', 'admin'] + list(args),
                           env={'PATH': '/usr/bin:/bin'})
    assert rc == 0, (args, err)
    return out.decode()


def _image_bytes(image, snap=None, size=None):
    from tests import rig
    spec = f'{CEPH["pool"]}/{image}' + (f'@{snap}' if snap else '')
    scratch = f'{os.environ["VOLSEP_TEST_WORK"]}/rbd-{uuid.uuid4().hex[:8]}'
    rig.mkdir(scratch)
    try:
        _rbd('export', '--no-progress', spec, f'{scratch}/image')
        return rig.read(f'{scratch}/image')
    finally:
        rig.rmtree(scratch)


def test_the_cluster_runs_with_cephx_and_root_only_keyrings(rig):
    assert CEPH.get('conf'), 'no Ceph cluster: run the suite with tests/run'
    ceph_dir = os.path.dirname(CEPH['conf'])
    for name in ('keyring.admin', 'keyring.volsep'):
        st = rig.lstat(f'{ceph_dir}/{name}')
        assert st['uid'] == 0 and st['mode'] & 0o777 == 0o600
        with pytest.raises(PermissionError):
            open(f'{ceph_dir}/{name}', 'rb')
    conf = open(CEPH['conf']).read()
    assert 'auth_client_required = cephx' in conf
    _rbd('ls', CEPH['pool'])


def test_root_side_refuses_pools_and_names_outside_its_allow_list():
    from volsep.privileged import errors as root_errors
    from volsep.privileged import rbd
    with pytest.raises(root_errors.InvalidArgument, match='not allowed'):
        rbd.scan('rbd')
    with pytest.raises(root_errors.InvalidArgument, match='not allowed'):
        rbd.create('volsep2', 'vm', 'root', {'kind': 'persistent'})
    for domain, volume in (('../x', 'v'), ('a/b', 'v'), ('vm', 'a+b'),
                           ('vm', 'x@snap'), ('', 'v'), ('vm', 'v' * 65)):
        with pytest.raises(root_errors.InvalidArgument):
            rbd.create('volsep', domain, volume, {'kind': 'persistent'})
    for bad in ({}, {'Kind': 'x'}, {'kind': 'x\n'}, {'kind': 1}):
        with pytest.raises(root_errors.InvalidArgument):
            rbd.create('volsep', 'vm', 'bad', bad)
    with pytest.raises(root_errors.InvalidArgument):
        rbd.commit('volsep', 'vm', 'root', 0)
    with pytest.raises(root_errors.InvalidArgument):
        rbd.create_data('volsep', 'vm', 'root', -1)
    assert 'vm/bad' not in rbd.scan('volsep')


def test_one_volume_is_scanned_without_the_others(hosts):
    from volsep.privileged import errors as root_errors
    from volsep.privileged import rbd
    a = hosts('host-a')
    one, other = _domain(), _domain()
    for dom in (one, other):
        a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--size',
            '1M')
    alone = rbd.scan(CEPH['pool'], one, 'root')
    assert list(alone) == [f'{one}/root']
    whole = rbd.scan(CEPH['pool'])
    assert f'{other}/root' in whole
    assert whole[f'{one}/root'] == alone[f'{one}/root']
    assert rbd.scan(CEPH['pool'], one, 'nothing') == {}
    for domain, volume in (('../x', 'v'), ('a/b', 'v'), (one, None),
                           (None, 'root'), (one, 'root+d'), (one, '')):
        with pytest.raises(root_errors.InvalidArgument):
            rbd.scan(CEPH['pool'], domain, volume)


def test_persistent_volume_commits_revisions_and_reverts(hosts, tmp_path):
    a = hosts('host-a')
    dom = _domain()
    a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--size', '4M',
        '--revisions-to-keep', '2')
    payload = os.urandom(MiB) + bytes(3 * MiB)
    src = tmp_path / 'in.raw'
    src.write_bytes(payload)
    a.j('volume', 'import', f'{dom}:root', str(src))
    out = tmp_path / 'out.raw'
    a.service.cli('volume', 'export', f'{dom}:root', str(out))
    assert out.read_bytes() == payload
    compare = subprocess.run(['/usr/bin/qemu-img', 'compare', '-f', 'raw',
                              '-F', 'raw', str(src), str(out)],
                             capture_output=True)
    assert compare.returncode == 0, compare.stdout
    started = a.j('domain', 'start', dom)
    image = f'{dom}+root+d'
    assert started == [{'volume': 'root', 'path':
                        f'rbd:{CEPH["pool"]}/{image}', 'format': 'raw',
                        'rw': True}]
    assert a.j('volume', 'info', f'{dom}:root')['owner'] == 'host-a'
    a.j('domain', 'stop', dom)
    ids = [r['id'] for r in a.j('volume', 'revisions', f'{dom}:root')]
    assert ids == [1, 2]   # creation, import; the stop made 3, current
    a.j('volume', 'revert', f'{dom}:root', '1')
    assert _image_bytes(image) == bytes(4 * MiB)
    ids = [r['id'] for r in a.j('volume', 'revisions', f'{dom}:root')]
    assert ids == [2, 3]   # revision ids only grow; 4 is current
    a.j('volume', 'revert', f'{dom}:root')  # undo: back to 3's content
    assert _image_bytes(image) == payload


def test_snapshot_and_volatile_volumes(hosts):
    a = hosts('host-a')
    dom, src = _domain(), _domain()
    a.j('volume', 'create', f'{src}:root', '--pool', 'ceph', '--size', '2M')
    a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--kind',
        'snapshot', '--source', f'{src}:root')
    a.j('volume', 'create', f'{dom}:swap', '--pool', 'ceph', '--kind',
        'volatile', '--size', '1M')
    paths = {v['volume']: v['path'] for v in a.j('domain', 'start', dom)}
    assert paths['root'].endswith(f'/{dom}+root+d')
    info = a.j('volume', 'info', f'{dom}:root')
    assert info['size'] == 2 * MiB and not info['is_outdated']
    a.j('volume', 'clear', f'{src}:root')   # a new generation of the source
    assert a.j('volume', 'info', f'{dom}:root')['is_outdated']
    a.j('domain', 'stop', dom)
    images = _rbd('ls', CEPH['pool']).split()
    assert f'{dom}+root+d' not in images and f'{dom}+swap+d' not in images
    assert f'{dom}+root' in images   # the anchor, with the configuration


def test_disk_xml_is_network_rbd_with_auth_and_validates(hosts, tmp_path):
    a = hosts('host-a')
    dom = _domain()
    a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--size', '1M')
    rc, out, err = a.service.cli('domain', 'disk-xml', dom)
    assert rc == 0, err
    disk = etree.fromstring(out)
    assert disk.get('type') == 'network'
    source = disk.find('source')
    assert source.get('protocol') == 'rbd'
    assert source.get('name') == f'{CEPH["pool"]}/{dom}+root+d'
    host, port = CEPH['monitors'].split(':')
    assert [(h.get('name'), h.get('port')) for h in source.findall('host')] \
        == [(host, port)]
    auth = source.find('auth')
    assert auth.get('username') == 'volsep'
    assert auth.find('secret').attrib == {'type': 'ceph', 'uuid': SECRET}
    assert 'key' not in out.lower().replace('backingstore', '')
    rc, out, err = a.service.cli('domain', 'disk-xml', dom, '--full')
    assert rc == 0, err
    domain_xml = tmp_path / 'domain.xml'
    domain_xml.write_text(out)
    check = subprocess.run(['/usr/bin/virt-xml-validate', str(domain_xml),
                            'domain'], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout


def test_second_host_lists_the_same_volumes_and_cannot_start_them(hosts):
    a, b = hosts('host-a'), hosts('host-b')
    dom = _domain()
    a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--size', '1M',
        '--revisions-to-keep', '3')
    listed = {v['vid']: v for v in b.j('volume', 'list', '--pool', 'ceph')}
    assert listed[f'{dom}:root']['size'] == MiB
    assert b.j('volume', 'info', f'{dom}:root')['revisions_to_keep'] == 3
    a.j('domain', 'start', dom)
    refused = b.fails('domain', 'start', dom)
    assert refused['error'] == 'VolumeBusy'
    assert 'host-a' in refused['message']
    assert b.j('volume', 'info', f'{dom}:root')['owner'] == 'host-a'
    a.j('domain', 'stop', dom)
    b.j('domain', 'start', dom)     # free again: B takes it
    assert a.fails('domain', 'start', dom)['error'] == 'VolumeBusy'
    b.j('domain', 'stop', dom)


def test_failover_after_sigkill_and_the_fenced_host_reports_the_loss(hosts):
    a, b = hosts('host-a'), hosts('host-b')
    dom = _domain()
    a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--size', '1M')
    b.j('volume', 'list')
    a.j('domain', 'start', dom)
    assert a.service.stop(signal.SIGKILL) == -signal.SIGKILL
    assert b.fails('domain', 'start', dom)['error'] == 'VolumeBusy'
    assert b.fails('volume', 'release', f'{dom}:root')['error'] == \
        'InvalidArgument'   # fencing needs --force
    released = b.j('volume', 'release', '--force', f'{dom}:root')
    assert released == {'volume': f'{dom}:root', 'fenced': 'host-a'}
    b.j('domain', 'start', dom)
    before = _rbd('snap', 'ls', f'{CEPH["pool"]}/{dom}+root+d')
    a.start()   # A comes back: it no longer owns the volume
    assert a.j('volume', 'info', f'{dom}:root')['running'] is False
    assert 'lost its ownership' in a.service.output()
    assert a.fails('domain', 'start', dom)['error'] == 'VolumeBusy'
    assert _rbd('snap', 'ls', f'{CEPH["pool"]}/{dom}+root+d') == before
    b.j('domain', 'stop', dom)


def test_a_fenced_live_host_cannot_write(hosts, rig):
    a, b = hosts('host-a'), hosts('host-b')
    dom = _domain()
    a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--size', '1M')
    b.j('volume', 'list')
    a.j('domain', 'start', dom)
    # A is alive but unreachable (frozen); B fences it and takes over.
    assert b.j('volume', 'release', '--force',
               f'{dom}:root')['fenced'] == 'host-a'
    b.j('domain', 'start', dom)
    before = _rbd('snap', 'ls', f'{CEPH["pool"]}/{dom}+root+d')
    lost = a.fails('domain', 'stop', dom)
    assert lost['error'] == 'VolumeBusy'
    assert 'lost' in lost['message'] or 'fenced' in lost['message']
    assert 'nothing was committed' in lost['message']
    assert _rbd('snap', 'ls', f'{CEPH["pool"]}/{dom}+root+d') == before
    assert a.j('volume', 'info', f'{dom}:root')['running'] is False
    b.j('domain', 'stop', dom)


def test_a_fenced_hosts_hypervisor_cannot_write(hosts, rig):
    """The owner's hypervisor has a Ceph client of its own (qemu's librbd):
    fencing shuts that one out too, not only volsep's."""
    a, b = hosts('host-a'), hosts('host-b')
    dom = _domain()
    a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--size', '1M')
    b.j('volume', 'list')
    a.j('domain', 'start', dom)
    image = f'{dom}+root+d'
    work = os.environ['VOLSEP_TEST_WORK']
    log, go = f'{work}/writer-{dom}.log', f'{work}/writer-{dom}.go'
    writer = rig.spawn([sys.executable, '-m', 'tests.rbd_writer',
                        CEPH['conf'], 'volsep', CEPH['pool'], image, go],
                       test_crash.worker_env(), log)
    status = None
    try:
        deadline = time.monotonic() + 60
        while b'opened' not in _log_of(rig, log):
            assert time.monotonic() < deadline, _log_of(rig, log)
            time.sleep(0.1)
        assert b.j('volume', 'release', '--force',
                   f'{dom}:root')['fenced'] == 'host-a'
        rig.write(go, b'')
        status = rig.wait(writer, 60)
    finally:
        if status is None:
            rig.kill(writer)
            rig.wait(writer)
    output = _log_of(rig, log).decode()
    assert status == 0 and 'second write failed: 108' in output, output
    assert _image_bytes(image)[:4096] == b'Q' * 4096
    b.j('domain', 'start', dom)   # B's own hypervisor may now write
    b.j('domain', 'stop', dom)


def _log_of(rig, path):
    try:
        return rig.read(path)
    except FileNotFoundError:
        return b''


def test_concurrent_starts_from_both_hosts_exactly_one_wins(hosts):
    a, b = hosts('host-a'), hosts('host-b')
    for _ in range(3):
        dom = _domain()
        a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--size',
            '1M')
        b.j('volume', 'list')
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(
                lambda h: h.service.cli('domain', 'start', dom, '-f',
                                        'json'), (a, b)))
        codes = sorted(rc for rc, _, _ in results)
        assert codes == [0, 1], results
        loser = results[[rc for rc, _, _ in results].index(1)]
        assert json.loads(loser[1])['error'] == 'VolumeBusy'
        winner = (a, b)[[rc for rc, _, _ in results].index(0)]
        winner.j('domain', 'stop', dom)


def _snapshot_names(image):
    """Its snapshots (the trash namespace aside), oldest first."""
    return [s['name'] for s in sorted(json.loads(_rbd(
        'snap', 'ls', '--format', 'json', f'{CEPH["pool"]}/{image}')),
        key=lambda s: s['id'])]


def _parent(image):
    info = json.loads(_rbd('info', '--format', 'json',
                           f'{CEPH["pool"]}/{image}'))
    parent = info.get('parent')
    return parent and (parent['image'], parent['snapshot'])


def test_instant_clone_is_copy_on_write_and_stays_independent(hosts,
                                                              tmp_path):
    from volsep.drivers import rbd as rbd_driver
    assert rbd_driver.RbdPool.describe()['capabilities']['clone_instant']
    a = hosts('host-a')
    src, dst = _domain(), _domain()
    payload = os.urandom(MiB) + bytes(3 * MiB)
    (tmp_path / 'a.raw').write_bytes(payload)
    (tmp_path / 'b.raw').write_bytes(b'B' * 4 * MiB)
    a.j('volume', 'create', f'{src}:root', '--pool', 'ceph', '--size', '4M')
    a.j('volume', 'create', f'{dst}:root', '--pool', 'ceph', '--size', '1M')
    a.j('volume', 'import', f'{src}:root', str(tmp_path / 'a.raw'))
    current = a.j('volume', 'info', f'{src}:root')
    a.j('volume', 'clone', f'{src}:root', f'{dst}:root')
    # Copy-on-write: the clone's image is a child of the source's current
    # generation, and holds no data of its own.
    newest = _snapshot_names(f'{src}+root+d')[-1]
    assert _parent(f'{dst}+root+d') == (f'{src}+root+d', newest)
    du = json.loads(_rbd('du', '--format', 'json',
                         f'{CEPH["pool"]}/{dst}+root+d'))
    assert sum(i['used_size'] for i in du['images']) == 0
    assert a.j('volume', 'info', f'{dst}:root')['size'] == current['size']

    def content(vol):
        out = tmp_path / f'{vol}.out'
        rc, _, err = a.service.cli('volume', 'export', vol, str(out),
                                   '--force')
        assert rc == 0, err
        return out.read_bytes()
    assert content(f'{dst}:root') == payload
    # Whatever happens to the source never reaches the clone: a new
    # generation, a revert, the cloned generation pruned, the source gone.
    a.j('volume', 'import', f'{src}:root', str(tmp_path / 'b.raw'))
    assert content(f'{dst}:root') == payload
    a.j('volume', 'revert', f'{src}:root')   # back to A's content
    a.j('volume', 'clear', f'{src}:root')
    assert newest not in _snapshot_names(f'{src}+root+d')   # pruned
    assert content(f'{dst}:root') == payload
    a.j('domain', 'start', dst)   # the clone takes writes and commits
    a.j('domain', 'stop', dst)
    a.j('volume', 'remove', f'{src}:root')   # flattens the clone first
    assert _parent(f'{dst}+root+d') is None
    assert content(f'{dst}:root') == payload
    assert not [n for n in _rbd('ls', CEPH['pool']).split()
                if n.startswith(f'{src}+')]


def test_instant_clone_refused_while_a_snapshot_of_the_target_runs(hosts):
    a = hosts('host-a')
    src, dst, snap = _domain(), _domain(), _domain()
    a.j('volume', 'create', f'{src}:root', '--pool', 'ceph', '--size', '1M')
    a.j('volume', 'create', f'{dst}:root', '--pool', 'ceph', '--size', '1M')
    a.j('volume', 'create', f'{snap}:root', '--pool', 'ceph', '--kind',
        'snapshot', '--source', f'{dst}:root')
    a.j('domain', 'start', snap)
    before = _rbd('ls', '-l', CEPH['pool'])
    refused = a.fails('volume', 'clone', f'{src}:root', f'{dst}:root')
    assert refused['error'] == 'VolumeBusy', refused
    assert 'snapshot volumes' in refused['message']
    assert _rbd('ls', '-l', CEPH['pool']) == before
    # Nor can the target go while its snapshot volume runs.
    assert a.fails('volume', 'remove', f'{dst}:root')['error'] == \
        'VolumeBusy'
    a.j('domain', 'stop', snap)


# -- images in other formats than raw ---------------------------------------

def _craft(case, tmp_path):
    directory = tmp_path / case.name
    directory.mkdir()
    return case.make(str(directory))


def _staging_left(rig, host):
    """What the staging directory still holds once the service is done
    with it (an export ends after the CLI has read its last byte)."""
    deadline = time.monotonic() + 10
    while rig.tree(host.staging_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    return rig.tree(host.staging_dir)


def _compare(fmt, a, b_fmt, b):
    check = subprocess.run(['/usr/bin/qemu-img', 'compare', '-f', fmt, '-F',
                            b_fmt, str(a), str(b)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_images_of_every_format_round_trip_through_an_rbd_volume(hosts,
                                                                  tmp_path,
                                                                  rig):
    """Imported through the staging directory (inspected, converted there
    by confined qemu-img, copied into the image), exported raw from the
    image and as qcow2 (written out raw there, converted): each export
    reads as the source does, and nothing is left in the staging
    directory."""
    a = hosts('host-a')
    dom = _domain()
    a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--size', '1M')
    for case in corpus.BENIGN:
        source = _craft(case, tmp_path)
        source_fmt = corpus.qemu_format(case.declared)
        a.j('volume', 'import', f'{dom}:root', source, '--format',
            case.declared, '--force')
        for fmt in ('raw', 'qcow2'):
            out = tmp_path / f'{case.name}.{fmt}'
            a.j('volume', 'export', f'{dom}:root', str(out), '--format', fmt)
            _compare(fmt, out, source_fmt, source)
        assert not corpus.host_bytes_in(
            (tmp_path / f'{case.name}.raw').read_bytes())
        assert _staging_left(rig, a) == {}, case.name


def test_hostile_images_are_refused_and_the_volume_stays(hosts, tmp_path,
                                                         rig):
    a = hosts('host-a')
    dom = _domain()
    a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--size', '4M')
    payload = tmp_path / 'payload.raw'
    payload.write_bytes(os.urandom(MiB) + bytes(3 * MiB))
    a.j('volume', 'import', f'{dom}:root', str(payload))
    image = f'{dom}+root+d'
    info = a.j('volume', 'info', f'{dom}:root')
    snaps = _snapshot_names(image)
    for case in corpus.HOSTILE:
        rc, out, err = a.service.cli('volume', 'import', f'{dom}:root',
                                     _craft(case, tmp_path), '--format',
                                     case.declared, '--force')
        assert rc == 1 and err.startswith('volsep: UnsafeImage: '), \
            (case.name, out, err)
        assert a.j('volume', 'info', f'{dom}:root') == info, case.name
        assert _snapshot_names(image) == snaps, case.name
        assert _image_bytes(image) == payload.read_bytes(), case.name
        assert _staging_left(rig, a) == {}, case.name


def test_non_raw_imports_need_a_staging_dir(hosts, rig, tmp_path):
    a = hosts('host-a')
    rc, out, err = a.service.cli(
        'pool', 'add', 'bare', 'rbd', '-o', f'ceph_pool={CEPH["pool"]}',
        '-o', 'host_id=host-a', '-o', f'monitors={CEPH["monitors"]}',
        '-o', 'staging_dir=relative/dir')
    assert rc == 1 and 'absolute' in err, err
    a.j('pool', 'add', 'bare', 'rbd', '-o', f'ceph_pool={CEPH["pool"]}',
        '-o', 'host_id=host-a', '-o', f'monitors={CEPH["monitors"]}')
    dom = _domain()
    a.j('volume', 'create', f'{dom}:root', '--pool', 'bare', '--size', '1M')
    source = corpus.converted(str(tmp_path), 'qcow2')
    refused = a.fails('volume', 'import', f'{dom}:root', source, '--format',
                      'qcow2', '--force')
    assert refused['error'] == 'InvalidArgument'
    assert 'staging_dir' in refused['message']
    refused = a.fails('volume', 'export', f'{dom}:root',
                      str(tmp_path / 'out.qcow2'), '--format', 'qcow2')
    assert 'staging_dir' in refused['message']
    assert not (tmp_path / 'out.qcow2').exists()


def test_a_change_under_way_on_one_host_is_left_alone_by_another(hosts,
                                                                 tmp_path):
    """Host A (a manager in this process) is importing into a stopped
    volume: it holds the volume meanwhile, so host B can neither start nor
    change it, and B's restart (reconcile) does not roll A's import
    back."""
    from volsep.frontend import manager as manager_module
    b = hosts('host-b')
    mgr = manager_module.Manager(str(tmp_path / 'host-a'))
    mgr.add_pool('ceph', 'rbd', [('ceph_pool', CEPH['pool']),
                                 ('host_id', 'host-a'),
                                 ('monitors', CEPH['monitors'])])
    dom = _domain()
    mgr.create_volume(f'{dom}:root', 'ceph', MiB)
    b.j('volume', 'list')
    mgr.import_begin(f'{dom}:root', MiB)
    mgr.import_write(f'{dom}:root', 0, b'n' * MiB)
    try:
        assert b.fails('domain', 'start', dom)['error'] == 'VolumeBusy'
        refused = b.fails('volume', 'clear', f'{dom}:root')
        assert refused['error'] == 'VolumeBusy'
        assert 'host-a' in refused['message']
        b.service.stop()
        b.start()   # reconcile
        assert b.j('volume', 'info', f'{dom}:root')['owner'] == 'host-a'
    finally:
        mgr.import_end(f'{dom}:root')
    assert _image_bytes(f'{dom}+root+d') == b'n' * MiB
    assert b.j('volume', 'info', f'{dom}:root')['owner'] is None
    mgr.remove_volume(f'{dom}:root')


def test_a_clone_keeps_the_revisions_of_the_volume_it_replaces(hosts,
                                                               tmp_path):
    a = hosts('host-a')
    src, dst = _domain(), _domain()
    first, second = os.urandom(MiB), os.urandom(MiB)
    (tmp_path / 'src.raw').write_bytes(b'S' * MiB)
    (tmp_path / 'first.raw').write_bytes(first)
    (tmp_path / 'second.raw').write_bytes(second)
    a.j('volume', 'create', f'{src}:root', '--pool', 'ceph', '--size', '1M')
    a.j('volume', 'import', f'{src}:root', str(tmp_path / 'src.raw'))
    a.j('volume', 'create', f'{dst}:root', '--pool', 'ceph', '--size', '1M',
        '--revisions-to-keep', '3')
    a.j('volume', 'import', f'{dst}:root', str(tmp_path / 'first.raw'))
    a.j('volume', 'import', f'{dst}:root', str(tmp_path / 'second.raw'))

    def revisions():
        return [r['id'] for r in a.j('volume', 'revisions', f'{dst}:root')]

    def archives():
        return sorted(n for n in _rbd('ls', CEPH['pool']).split()
                      if n.startswith(f'{dst}+root+a'))
    assert revisions() == [1, 2]          # 3 is current
    a.j('volume', 'clone', f'{src}:root', f'{dst}:root')
    assert _image_bytes(f'{dst}+root+d') == b'S' * MiB
    # The replaced image is kept read-only as an archive: its generations
    # are revisions still, and the clone's ids go on from them.
    assert archives() == [f'{dst}+root+a3']
    assert revisions() == [1, 2, 3]       # 4, the clone, is current
    a.j('volume', 'revert', f'{dst}:root', '2')
    assert _image_bytes(f'{dst}+root+d') == first
    assert revisions() == [2, 3, 4]       # 5 current; 1 pruned
    a.j('volume', 'revert', f'{dst}:root')   # undo: back to the clone
    assert _image_bytes(f'{dst}+root+d') == b'S' * MiB
    assert revisions() == [3, 4, 5]
    # Each swap archived the image it replaced: +a4 (the clone's) and
    # +a5 (the first revert's, a clone of +a3).
    assert archives() == [f'{dst}+root+a{n}' for n in (3, 4, 5)]
    for name in ('first', 'second'):   # 7, 8: older revisions pruned
        a.j('volume', 'import', f'{dst}:root', str(tmp_path / f'{name}.raw'))
    assert revisions() == [5, 6, 7]
    # An archive left without revisions goes, its clones flattened first.
    assert archives() == [f'{dst}+root+a5']
    a.j('volume', 'revert', f'{dst}:root', '5')   # 9, from +a5
    assert revisions() == [6, 7, 8]
    assert archives() == [f'{dst}+root+a8']   # +a5 gone, +d flattened
    assert _parent(f'{dst}+root+d') is None
    assert _image_bytes(f'{dst}+root+d') == first
    a.j('volume', 'remove', f'{dst}:root')
    assert not [n for n in _rbd('ls', CEPH['pool']).split()
                if n.startswith(f'{dst}+')]
    assert _image_bytes(f'{src}+root+d') == b'S' * MiB


def _export(host, address, tmp_path):
    out = tmp_path / f'{uuid.uuid4().hex[:8]}.raw'
    host.j('volume', 'export', address, str(out))
    return out.read_bytes()


def test_resize_as_the_file_drivers_do(hosts, tmp_path):
    """Scenarios 34-36 and 39 on an rbd volume: growing adds zeros and
    leaves the old generation as it was, shrinking needs --force, a
    running volume grows at once and keeps its size at the stop, and a
    bad size changes nothing."""
    a = hosts('host-a')
    dom = _domain()
    address = f'{dom}:root'
    a.j('volume', 'create', address, '--pool', 'ceph', '--size', '2M',
        '--revisions-to-keep', '1')
    data = os.urandom(2 * MiB)
    a.j('volume', 'import', address, '-', '--size', str(2 * MiB),
        input_data=data)
    a.j('volume', 'resize', address, '4M')
    assert a.j('volume', 'info', address)['size'] == 4 * MiB
    assert _export(a, address, tmp_path) == data + bytes(2 * MiB)
    revision = a.j('volume', 'revisions', address)[-1]['id']
    a.j('volume', 'revert', address, str(revision))   # the old generation
    assert _export(a, address, tmp_path) == data
    assert a.fails('volume', 'resize', address, '1M')['error'] == \
        'InvalidArgument'
    for bad in ('-1', '1.5', '1' * 20):
        rc, _, err = a.service.cli('volume', 'resize', address, bad)
        assert rc in (1, 2) and 'size' in err, err
    assert a.j('volume', 'info', address)['size'] == 2 * MiB
    a.j('volume', 'resize', address, '1M', '--force')
    assert _export(a, address, tmp_path) == data[:MiB]
    a.j('domain', 'start', dom)
    a.j('volume', 'resize', address, '3M')
    assert a.j('volume', 'info', address)['size'] == 3 * MiB
    a.j('domain', 'stop', dom)
    assert a.j('volume', 'info', address)['size'] == 3 * MiB
    assert _export(a, address, tmp_path) == data[:MiB] + bytes(2 * MiB)


def test_imports_exports_and_reverts_as_the_file_drivers_do(hosts,
                                                            tmp_path):
    """Scenarios 14, 22, 24, 28, 31 and 11 on rbd volumes:
    revisions_to_keep=0 keeps none, a short import stream changes
    nothing, a running volume refuses imports and reverts while its
    export still gives what was committed before the start, and removing
    the volumes leaves none of their images."""
    a = hosts('host-a')
    dom = _domain()
    address = f'{dom}:root'
    a.j('volume', 'create', address, '--pool', 'ceph', '--size', '1M',
        '--revisions-to-keep', '1')
    a.j('volume', 'create', f'{dom}:none', '--pool', 'ceph', '--size',
        '1M', '--revisions-to-keep', '0')
    for _ in range(2):
        a.j('volume', 'import', f'{dom}:none', '-', '--size', str(MiB),
            input_data=os.urandom(MiB))
    assert a.j('volume', 'revisions', f'{dom}:none') == []
    first = os.urandom(MiB)
    a.j('volume', 'import', address, '-', '--size', str(MiB),
        input_data=first)
    before = a.j('volume', 'info', address)
    rc, _, err = a.service.cli('volume', 'import', address, '-', '--size',
                               str(MiB), input_data=first[:MiB // 2])
    assert rc == 1 and err, err
    assert a.j('volume', 'info', address) == before
    assert _export(a, address, tmp_path) == first
    a.j('volume', 'import', address, '-', '--size', str(MiB),
        input_data=os.urandom(MiB))
    committed = _export(a, address, tmp_path)
    a.j('domain', 'start', dom)
    assert a.fails('volume', 'import', address, '-', '--size', str(MiB),
                   input_data=first)['error'] == 'VolumeBusy'
    assert a.fails('volume', 'revert', address)['error'] == 'VolumeBusy'
    assert _export(a, address, tmp_path) == committed
    a.j('domain', 'stop', dom)
    for name in ('root', 'none'):
        a.j('volume', 'remove', f'{dom}:{name}')
    assert not [name for name in _rbd('ls', CEPH['pool']).split()
                if name.startswith(f'{dom}+')]


def test_what_an_rbd_pool_cannot_do_is_refused_clearly(hosts, rig):
    """revisions_to_keep=-1 (the VM writing the committed image) is
    refused at create and set, and a clone from an rbd volume into a file
    pool says what to do instead; none of them changes anything."""
    a = hosts('host-a')
    dom = _domain()
    refused = a.fails('volume', 'create', f'{dom}:root', '--pool', 'ceph',
                      '--size', '1M', '--revisions-to-keep', '-1')
    assert refused['error'] == 'NotSupported', refused
    assert 'revisions_to_keep=-1' in refused['message']
    assert not [name for name in _rbd('ls', CEPH['pool']).split()
                if name.startswith(f'{dom}+')]
    a.j('volume', 'create', f'{dom}:root', '--pool', 'ceph', '--size', '1M')
    refused = a.fails('volume', 'set', f'{dom}:root', 'revisions_to_keep',
                      '-1')
    assert refused['error'] == 'NotSupported', refused
    assert a.j('volume', 'info', f'{dom}:root')['revisions_to_keep'] == 1
    a.j('volume', 'create', f'{dom}:copy', '--pool', 'default', '--size',
        '1M')
    path = a.j('volume', 'info', f'{dom}:copy')['path']
    before = rig.tree(os.path.dirname(path))
    refused = a.fails('volume', 'clone', f'{dom}:root', f'{dom}:copy')
    assert refused['error'] == 'NotSupported', refused
    assert 'export it and import the export' in refused['message']
    assert rig.tree(os.path.dirname(path)) == before


def test_a_pending_import_changes_neither_size_nor_dirtiness(hosts):
    """Scenarios 26 and 10: while a raw import of another size streams
    in, the volume still reports its committed size and is not dirty;
    the import's end brings the new size."""
    a = hosts('host-a')
    dom = _domain()
    address = f'{dom}:root'
    a.j('volume', 'create', address, '--pool', 'ceph', '--size', '1M')
    data = os.urandom(2 * MiB)
    proc = subprocess.Popen(
        [f'{sh.VENV}/volsep', '--socket', a.service.socket, 'volume',
         'import', address, '-', '--size', str(2 * MiB)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env={'PATH': '/usr/bin:/bin'})
    try:
        proc.stdin.write(data[:MiB])
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        info = a.j('volume', 'info', address)
        while not info['import_pending'] and time.monotonic() < deadline:
            time.sleep(0.2)
            info = a.j('volume', 'info', address)
        assert info['import_pending'], info
        assert info['size'] == MiB and not info['is_dirty'], info
        proc.stdin.write(data[MiB:])
        proc.stdin.close()
        assert proc.wait(120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    info = a.j('volume', 'info', address)
    assert info['size'] == 2 * MiB and not info['is_dirty'], info
    assert not info['import_pending']
