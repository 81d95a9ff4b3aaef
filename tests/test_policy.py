"""Policy limits and per-domain scope, against a real volsepd.

Size limits: a pool's max_volume_size (the policy file's, or the pool's own
option; the smaller holds) bounds every size an operation sets or grows:
create, import (the raw stream, or the virtual size qemu-img reads from a
non-raw image), resize, clone, revert, snapshot creation. A refused call is
InvalidArgument (UnsafeImage for an image whose virtual size is too big, as
for every image refusal) and leaves the pool exactly as it was.

Domain scope: a rule with "domains" grants its methods only for those
domains; listings and events are cut down to them. Refusals are
PermissionDenied and change nothing.
"""

import json
import os
import struct
import subprocess
import threading

import pytest

from tests import service_helpers as sh
from volsep.drivers import errors
from volsep.frontend import peer as peer_module
from volsep.frontend import policy as policy_module

MiB = 1 << 20
GiB = 1 << 30
TEST_USER = os.environ.get('VOLSEP_TEST_USER', 'volsep-test')
EVERYONE = ['root', TEST_USER, 'volsep']
LIMITED = {'rules': [{'users': EVERYONE, 'allow': ['*']}],
           'pools': {'default': {'max_volume_size': GiB}}}
# volsep-test may do anything, but only to web-* domains; nobody only to db.
SCOPED = {'rules': [
    {'users': ['root', 'volsep'], 'allow': ['*']},
    {'users': [TEST_USER], 'domains': ['web-*'], 'allow': ['admin.*']},
    {'users': ['nobody'], 'domains': ['db'],
     'allow': ['admin.vm.*', 'admin.Events']}]}


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


# -- per-domain scope --------------------------------------------------------

def _as(rig, svc, user, *args):
    """The CLI run as another unprivileged uid (root's setpriv)."""
    rc, out, err = rig.run(
        ['setpriv', f'--reuid={user}', '--regid=nogroup', '--clear-groups',
         '--', f'{sh.VENV}/volsep', '--socket', svc.socket, *args],
        env={'PATH': '/usr/bin:/bin'})
    return rc, out.decode(errors='replace'), err.decode(errors='replace')


def _scoped_service(start):
    svc = start(SCOPED)
    for address in ('web-1:root', 'web-2:root', 'db:root'):
        rc, _, err = svc.cli('volume', 'create', address, '--pool',
                             'default', '--size', '4M', as_root=True)
        assert rc == 0, err
    return svc


def test_a_scoped_caller_reaches_only_its_domains(start, rig, tmp_path):
    svc = _scoped_service(start)
    pools = f'{svc.state_dir}/pools'
    # a root CloneFrom token of a foreign volume cannot be used either
    rc, out, err = rig.run(
        [f'{sh.VENV}/python', '-c',
         'import sys; from volsep.frontend import client; print(client.'
         'Client(sys.argv[1]).call("admin.vm.volume.CloneFrom", '
         'volume="db:root")["token"])', svc.socket],
        env={'PATH': '/usr/bin:/bin'})
    assert rc == 0, err
    token = out.decode().strip()
    before = rig.tree(pools)
    denied_export = str(tmp_path / 'denied.raw')
    export = str(tmp_path / 'out.raw')
    for args in (('volume', 'export', 'db:root', denied_export),
                 ('domain', 'start', 'db'),
                 ('domain', 'stop', 'db'),
                 ('volume', 'info', 'db:root'),
                 ('volume', 'resize', 'db:root', '8M'),
                 ('volume', 'remove', 'db:root'),
                 ('volume', 'clone', 'db:root', 'web-1:root'),
                 ('volume', 'clone', 'web-1:root', 'db:root'),
                 ('volume', 'create', 'db:new', '--pool', 'default',
                  '--size', '1M'),
                 ('volume', 'create', 'web-1:snap', '--pool', 'default',
                  '--kind', 'snapshot', '--source', 'db:root'),
                 ('volume', 'list', 'db'),
                 ('volume', 'list', 'web-1', 'db'),
                 # "admin.*" matches these, but they act on every domain
                 ('pool', 'add', 'more', 'file', '-o',
                  f'dir_path={pools}/more'),
                 ('pool', 'set', 'default', '-o', 'revisions_to_keep=5'),
                 ('pool', 'remove', 'default')):
        _refused(svc, *args, error='PermissionDenied')
    from volsep.frontend import client
    c = client.Client(svc.socket)
    with pytest.raises(client.RemoteError) as refused:
        c.call('admin.vm.volume.CloneTo', volume='web-1:root', token=token)
    assert refused.value.error_class == 'PermissionDenied'
    rc, _, err = svc.cli('domain', 'disk-xml', 'db')  # it has no -f json
    assert rc == 1 and err.startswith('volsep: PermissionDenied: '), err
    c.close()
    assert 'only for domains matching web-*, not db' in svc.cli(
        'volume', 'export', 'db:root', denied_export)[2]
    assert rig.tree(pools) == before
    # the CLI writes a temporary file and renames it only on success
    assert not os.path.exists(denied_export)

    # its own domains work
    assert [(v['domain'], v['name']) for v in svc.json('volume', 'list')] \
        == [('web-1', 'root'), ('web-2', 'root')]
    assert [v['domain'] for v in svc.json('volume', 'list', 'web-2')] == \
        ['web-2']
    started = svc.json('domain', 'start', 'web-1')
    rig.pwrite(started[0]['path'], 0, b'web-1 data')
    svc.json('domain', 'stop', 'web-1')
    svc.json('volume', 'export', 'web-1:root', export)
    with open(export, 'rb') as f:
        assert f.read(10) == b'web-1 data'
    assert svc.json('volume', 'import', 'web-2:root', export)['size'] == \
        4 * MiB
    assert svc.json('volume', 'clone', 'web-1:root', 'web-2:root')
    svc.json('volume', 'create', 'web-3:root', '--pool', 'default',
             '--size', '1M')
    assert [p['name'] for p in svc.json('pool', 'list')] == ['default']
    # the import refused above, now that the file exists: web-1 is fine,
    # db is not
    before = rig.tree(pools)
    _refused(svc, 'volume', 'import', 'db:root', export,
             error='PermissionDenied')
    assert rig.tree(pools) == before

    # a second scoped uid sees only its own domain
    rc, out, err = _as(rig, svc, 'nobody', 'volume', 'list', '-f', 'json')
    assert rc == 0, err
    assert [v['domain'] for v in json.loads(out)] == ['db']
    rc, out, err = _as(rig, svc, 'nobody', 'domain', 'start', 'web-1',
                       '-f', 'json')
    assert rc == 1 and json.loads(out)['error'] == 'PermissionDenied'
    rc, out, err = _as(rig, svc, 'nobody', 'domain', 'start', 'db', '-f',
                       'json')
    assert rc == 0, err
    rc, out, err = _as(rig, svc, 'nobody', 'pool', 'list', '-f', 'json')
    assert rc == 1 and json.loads(out)['error'] == 'PermissionDenied'
    # root still sees everything
    rc, out, err = svc.cli('volume', 'list', '-f', 'json', as_root=True)
    assert {v['domain'] for v in json.loads(out)} == \
        {'web-1', 'web-2', 'web-3', 'db'}


def test_a_scoped_caller_hears_only_of_its_domains(start, rig):
    from volsep.frontend import client
    svc = _scoped_service(start)
    listener = client.Client(svc.socket)
    listener._send('admin.Events', {'patterns': ['*']})
    assert listener._reply() == {'subscribed': ['*']}
    received = []

    def listen():
        for line in iter(listener.stream.readline, b''):
            received.append(json.loads(line))
            if received[-1]['event'] == 'volume-removed':
                return
    thread = threading.Thread(target=listen, daemon=True)
    thread.start()

    def root(*args):
        rc, _, err = svc.cli(*args, as_root=True)
        assert rc == 0, (args, err)
    root('pool', 'add', 'more', 'file', '-o',
         f'dir_path={svc.state_dir}/pools/more')
    root('volume', 'create', 'db:data', '--pool', 'more', '--size', '1M')
    root('domain', 'start', 'db')
    root('domain', 'stop', 'db')
    root('volume', 'remove', 'db:data')
    root('volume', 'create', 'web-1:data', '--pool', 'more', '--size', '1M')
    root('domain', 'start', 'web-1')
    root('domain', 'stop', 'web-1')
    root('volume', 'remove', 'web-1:data')
    thread.join(20)
    listener.close()
    kinds = [(e['event'], e['subject']) for e in received]
    assert kinds[0] == ('volume-created', 'web-1:data'), kinds
    assert ('domain-started', 'web-1') in kinds, kinds
    assert kinds[-1] == ('volume-removed', 'web-1:data'), kinds
    assert all(s in ('web-1', 'web-1:data', 'web-1:root') for _, s in kinds)


# -- the rule file -----------------------------------------------------------

def _peer(uid):
    return peer_module.Peer(pid=1, uid=uid, gid=uid, groups=())


def test_scope_semantics_of_check():
    policy = policy_module.Policy([
        {'uids': [50001], 'domains': ['web-*', 'api'], 'allow': ['*']},
        {'uids': [50002], 'allow': ['admin.vm.*']}], {})
    scoped, unscoped = _peer(50001), _peer(50002)
    assert policy.check(unscoped, 'admin.vm.Start', {'domain': 'db'}) is None
    allowed = [
        ('admin.vm.Start', {'domain': 'web-1'}),
        ('admin.vm.volume.Info', {'volume': 'api:root'}),
        ('admin.vm.volume.Create', {'volume': 'web-1:s', 'pool': 'default',
                                    'kind': 'snapshot',
                                    'source': 'web-2:root'}),
        ('admin.vm.volume.List', {}),
        ('admin.vm.volume.List', {'domains': ['web-1', 'api']}),
        ('admin.Events', {'patterns': ['*']}),
        ('admin.pool.List', {}), ('admin.pool.Info', {'pool': 'default'})]
    for method, params in allowed:
        scope = policy.check(scoped, method, params)
        assert scope is not None and scope.covers('web-9'), method
        assert not scope.covers('db') and not scope.covers('apix')
    denied = [
        ('admin.vm.Start', {'domain': 'db'}),
        ('admin.vm.volume.Info', {'volume': 'db:root'}),
        ('admin.vm.volume.Create', {'volume': 'web-1:s', 'pool': 'default',
                                    'kind': 'snapshot', 'source': 'db:root'}),
        ('admin.vm.volume.List', {'domains': ['web-1', 'db']}),
        ('admin.pool.Add', {'pool': 'x', 'driver': 'file'}),
        ('admin.pool.Set', {'pool': 'default'}),
        ('admin.pool.Remove', {'pool': 'default'}),
        ('admin.vm.volume.Info', {}),   # names nothing: not a view
        ('admin.pool.List', {'volume': 'db:root'})]
    for method, params in denied:
        with pytest.raises(errors.PermissionDenied):
            policy.check(scoped, method, params)
    with pytest.raises(errors.PermissionDenied):
        policy.check(scoped, 'admin.vm.volume.CloneTo',
                     {'volume': 'web-1:root', 'token': 't'},
                     also=('db:root',))
    with pytest.raises(errors.InvalidArgument):
        policy.check(scoped, 'admin.vm.volume.Info', {'volume': 'web-1'})
    scope = policy.check(scoped, 'admin.Events', {})
    assert scope.sees_event({'event': 'volume-created',
                             'subject': 'web-1:root'})
    assert scope.sees_event({'event': 'domain-stopped', 'subject': 'api'})
    for event, subject in (('volume-created', 'db:root'),
                           ('domain-started', 'db'),
                           ('pool-added', 'web-1'), ('volume-x', 'web-1')):
        assert not scope.sees_event({'event': event, 'subject': subject})
    assert scope.volumes([{'domain': 'web-1'}, {'domain': 'db'}]) == \
        [{'domain': 'web-1'}]


@pytest.mark.parametrize('document', [
    # a misspelt "domains" would make the rule unscoped: refused
    {'rules': [{'users': ['x'], 'domain': ['web-*'], 'allow': ['*']}]},
    {'rules': [{'users': ['x'], 'domains': 'web-*', 'allow': ['*']}]},
    {'rules': [{'users': ['x'], 'domains': [], 'allow': ['*']}]},
    {'rules': [], 'pools': {'default': {'max_volume_size': '1G'}}},
    {'rules': [], 'pools': {'default': {'max_volume_size': -1}}},
    {'rules': [], 'pools': {'default': {'max_size': 1}}},
])
def test_policy_file_mistakes_are_refused(tmp_path, document):
    path = tmp_path / 'policy.json'
    path.write_text(json.dumps(document))
    with pytest.raises(errors.StorageError):
        policy_module.Policy.load(str(path))


def test_shipped_sample_policy_loads():
    sample = f'{os.environ["VOLSEP_TEST_ETC"]}/policy.json.sample'
    policy = policy_module.Policy.load(sample)
    assert any('domains' in rule for rule in policy.rules)
