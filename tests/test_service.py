"""volsepd and the volsep CLI end to end: a real daemon started as root,
its frontend running as the 'volsep' user, driven by the CLI from the
unprivileged test user (another uid again)."""

import json
import os
import pwd
import signal
import socket
import threading

import pytest

from tests import service_helpers as sh

MiB = 1 << 20
TEST_USER = os.environ.get('VOLSEP_TEST_USER', 'volsep-test')
EVERYONE = {'rules': [{'users': ['root', TEST_USER, 'volsep'],
                       'allow': ['*']}]}


@pytest.fixture
def service(rig):
    state_dir = sh.fresh_state_dir()
    svc = sh.Service(state_dir, policy=EVERYONE).start()
    yield svc
    if svc.pid is not None:
        svc.stop()
    rig.rmtree(state_dir)


def test_frontend_unprivileged_daemons_root_files_root_owned(service, rig):
    frontend = sh.status_of(service.pid)
    volsep_uid = pwd.getpwnam('volsep').pw_uid
    assert frontend['Uid'].split() == [str(volsep_uid)] * 4
    assert int(frontend['CapEff'], 16) == 0
    children = sh.children_of(service.pid)
    assert len(children) == 2
    assert all(sh.status_of(pid)['Uid'].split()[0] == '0' for pid in children)
    info = service.json('volume', 'create', 'vm:root', '--pool', 'default',
                        '--size', '8M')
    st = rig.lstat(info['path'])
    assert st['uid'] == 0 and st['mode'] & 0o777 == 0o600
    assert os.getuid() not in (0, volsep_uid)


def test_every_interface_command_with_json(service, rig, tmp_path):
    j = service.json
    assert j('pool', 'list') == [{'name': 'default',
                                  'driver': 'file-reflink'}]
    drivers = {d['driver'] for d in j('pool', 'drivers')}
    assert {'file', 'file-reflink'} <= drivers
    pool_dir = f'{service.state_dir}/pools/extra'
    added = j('pool', 'add', 'extra', 'file', '-o', f'dir_path={pool_dir}',
              '-o', 'revisions_to_keep=2')
    assert added['name'] == 'extra' and added['included_in'] is None
    assert j('pool', 'set', 'extra', '-o',
             'revisions_to_keep=3')['revisions_to_keep'] == '3'
    info = j('pool', 'info', 'default')
    assert {'name', 'driver', 'size', 'usage', 'included_in',
            'dir_path'} <= set(info)

    vol = j('volume', 'create', 'vm:root', '--pool', 'default', '--size',
            '4MiB', '--revisions-to-keep', '2')
    assert set(vol) >= {'domain', 'name', 'pool', 'vid', 'kind',
                        'snap_on_start', 'save_on_stop', 'source', 'size',
                        'usage', 'rw', 'revisions_to_keep', 'is_outdated',
                        'is_dirty', 'running', 'format', 'path'}
    assert vol['size'] == 4 * MiB
    j('volume', 'create', 'vm:snap', '--pool', 'default', '--kind',
      'snapshot', '--source', 'vm:root')
    j('volume', 'create', 'other:root', '--pool', 'extra', '--size', '1M')
    listed = j('volume', 'list')
    assert [(v['domain'], v['name']) for v in listed] == [
        ('other', 'root'), ('vm', 'root'), ('vm', 'snap')]
    assert set(listed[0]) == {'domain', 'name', 'pool', 'vid', 'kind',
                              'size'}
    assert j('volume', 'list', '--pool', 'extra')[0]['pool'] == 'extra'
    assert j('volume', 'info', 'vm:root', 'size') == {'size': 4 * MiB}
    assert j('volume', 'set', 'vm:root', 'rw', 'no')['rw'] is False
    j('volume', 'set', 'vm:root', 'rw', 'yes')
    started = j('domain', 'start', 'vm')
    assert {s['volume'] for s in started} == {'root', 'snap'}
    assert all(set(s) == {'volume', 'path', 'format', 'rw'} for s in started)
    assert j('domain', 'stop', 'vm') == {'domain': 'vm', 'running': False}
    assert j('volume', 'resize', 'vm:root', '8M')['size'] == 8 * MiB

    data = os.urandom(2 * MiB)
    image = tmp_path / 'in.img'
    image.write_bytes(data)
    assert j('volume', 'import', 'vm:root', str(image),
             '--force')['size'] == 2 * MiB
    revisions = j('volume', 'revisions', 'vm:root')
    assert revisions and set(revisions[0]) == {'id', 'timestamp', 'size'}
    out = tmp_path / 'out.img'
    exported = j('volume', 'export', 'vm:root', str(out))
    assert exported['size'] == 2 * MiB and out.read_bytes() == data
    reverted = j('volume', 'revert', 'vm:root', str(revisions[-1]['id']))
    assert reverted['size'] == 8 * MiB
    assert j('volume', 'clone', 'vm:root', 'other:root')['size'] == 8 * MiB
    assert j('volume', 'clear', 'other:root')['size'] == 8 * MiB
    assert j('volume', 'remove', 'other:root')['removed'] is True
    assert j('pool', 'remove', 'extra')['removed'] is True

    rc, out, err = service.cli('audit', 'verify', '--audit-log',
                               f'{service.state_dir}/audit.log', '-f', 'json',
                               as_root=True)
    assert rc == 0, err
    assert json.loads(out)['ok'] is True and json.loads(out)['lines'] > 20


def test_errors_follow_the_contract(service):
    rc, out, err = service.cli('volume', 'info', 'vm:nope', '-f', 'json')
    assert rc == 1
    assert json.loads(out) == {'error': 'VolumeNotFound',
                               'message': 'no volume vm:nope'}
    assert err.strip() == 'volsep: VolumeNotFound: no volume vm:nope'
    rc, _, err = service.cli('volume', 'create', '../x:root', '--pool',
                             'default', '--size', '1M')
    assert rc == 1 and err.startswith('volsep: InvalidArgument:')
    rc, _, _ = service.cli('volume', 'create', 'vm:r', '--pool', 'default',
                           '--size', '1' * 20)
    assert rc == 1
    rc, _, _ = service.cli('volume', 'frobnicate')
    assert rc == 2
    rc, _, _ = service.cli('volume', 'create')
    assert rc == 2
    assert service.json('volume', 'list') == []


def test_policy_denies_and_changes_nothing(rig):
    state_dir = sh.fresh_state_dir()
    policy = {'rules': [
        {'users': ['root'], 'allow': ['*']},
        {'users': [TEST_USER], 'allow': ['admin.pool.List',
                                         'admin.vm.volume.List',
                                         'admin.vm.volume.Info']}]}
    svc = sh.Service(state_dir, policy=policy).start()
    try:
        rc, out, err = svc.cli('volume', 'create', 'vm:root', '--pool',
                               'default', '--size', '1M', as_root=True)
        assert rc == 0, err
        before = rig.tree(f'{state_dir}/pools')
        for args in (('volume', 'create', 'vm:x', '--pool', 'default',
                      '--size', '1M'),
                     ('volume', 'remove', 'vm:root'),
                     ('domain', 'start', 'vm'),
                     ('pool', 'remove', 'default')):
            rc, out, err = svc.cli(*args, '-f', 'json')
            assert rc == 1, args
            assert json.loads(out)['error'] == 'PermissionDenied'
        assert rig.tree(f'{state_dir}/pools') == before
        assert [v['name'] for v in svc.json('volume', 'list')] == ['root']
        assert f'denied uid={os.getuid()}' in svc.output()
    finally:
        svc.stop()
        rig.rmtree(state_dir)


def _raw(service):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(service.socket)
    return sock, sock.makefile('rb')


def test_short_and_long_import_streams_roll_back(service, rig):
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '1M')
    volume_dir = f'{service.state_dir}/pools/default/vm/root'
    before = rig.tree(volume_dir)
    for extra in (-1000, 1000):
        sock, reader = _raw(service)
        sock.sendall(json.dumps({'id': 1, 'method': 'admin.vm.volume.Import',
                                 'params': {'volume': 'vm:root',
                                            'size': MiB}}).encode() + b'\n')
        assert 'ready' in json.loads(reader.readline())['result']
        sock.sendall(b'x' * (MiB + extra))
        if extra < 0:
            sock.shutdown(socket.SHUT_WR)
        reply = json.loads(reader.readline())
        assert reply['error']['class'] == 'InvalidArgument', reply
        sock.close()
    after = rig.tree(volume_dir)
    assert {k: v[-1] for k, v in after.items()} == \
        {k: v[-1] for k, v in before.items()}


def test_sigkill_mid_import_then_restart(service, rig):
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '4M')
    path = service.json('volume', 'info', 'vm:root')['path']
    digest = rig.sha256(path)
    sock, reader = _raw(service)
    sock.sendall(json.dumps({'id': 1, 'method': 'admin.vm.volume.Import',
                             'params': {'volume': 'vm:root',
                                        'size': 4 * MiB}}).encode() + b'\n')
    reader.readline()
    sock.sendall(b'y' * (2 * MiB))
    assert service.stop(signal.SIGKILL) == -signal.SIGKILL
    sock.close()
    service.start()
    info = service.json('volume', 'info', 'vm:root')
    assert info['size'] == 4 * MiB and rig.sha256(info['path']) == digest
    names = set(rig.tree(f'{service.state_dir}/pools/default/vm/root'))
    assert names == {os.path.basename(info['path'])}


def test_sigterm_stops_cleanly_and_restart_keeps_state(service):
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '1M')
    service.json('domain', 'start', 'vm')
    assert service.stop() == 0
    service.start()
    info = service.json('volume', 'info', 'vm:root')
    assert info['running'] is True and info['is_dirty'] is True
    service.json('domain', 'stop', 'vm')


def test_events_with_wildcards(service):
    from volsep.frontend import client
    received = []
    subscriber = client.Client(service.socket)
    ready = threading.Event()

    def listen():
        stream = subscriber.events(['volume-*'])
        ready.set()
        for event in stream:
            received.append(event)
            if event['event'] == 'volume-removed':
                return
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(5)
    import time
    time.sleep(0.2)
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '1M')
    service.json('domain', 'start', 'vm')
    service.json('domain', 'stop', 'vm')
    service.json('volume', 'remove', 'vm:root')
    listener.join(10)
    kinds = [e['event'] for e in received]
    assert kinds == ['volume-created', 'volume-started', 'volume-stopped',
                     'volume-committed', 'volume-removed'], kinds
    assert all(e['subject'] == 'vm:root' for e in received)


def test_fifty_concurrent_clients(service):
    from volsep.frontend import client
    for i in range(10):
        service.json('volume', 'create', f'vm{i}:root', '--pool', 'default',
                     '--size', '4M')
    failures = []

    def work(n):
        c = client.Client(service.socket)
        try:
            for _ in range(4):
                if n % 2:
                    c.call('admin.vm.volume.List')
                    c.call('admin.vm.volume.Info', volume=f'vm{n % 10}:root')
                else:
                    domain = f'vm{n % 10}'
                    for method in ('admin.vm.Start', 'admin.vm.Stop'):
                        try:
                            c.call(method, domain=domain)
                        except client.RemoteError as err:
                            if err.error_class != 'VolumeBusy':
                                raise
        except Exception as err:  # noqa: BLE001 - collected and checked
            failures.append(repr(err))
        finally:
            c.close()
    threads = [threading.Thread(target=work, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), 'deadlock'
    assert failures == []
    for i in range(10):
        info = service.json('volume', 'info', f'vm{i}:root')
        if info['running']:
            service.json('domain', 'stop', f'vm{i}')
        assert service.json('volume', 'info', f'vm{i}:root')['is_dirty'] is \
            False


def test_user_mode_same_code_path(tmp_path):
    import subprocess
    import time
    state_dir = tmp_path / 'user-mode'
    proc = subprocess.Popen([f'{sh.VENV}/volsepd', '--state-dir',
                             str(state_dir)], stderr=subprocess.PIPE)
    try:
        sock_path = state_dir / 'volsepd.sock'
        for _ in range(300):
            if sock_path.exists():
                break
            time.sleep(0.05)
        assert sh.wait_until_answering(str(sock_path))
        svc = sh.Service.__new__(sh.Service)
        svc.socket = str(sock_path)
        info = svc.json('volume', 'create', 'vm:root', '--pool', 'default',
                        '--size', '1M')
        assert os.stat(info['path']).st_uid == os.getuid()
        started = svc.json('domain', 'start', 'vm')
        with open(started[0]['path'], 'r+b') as f:
            f.write(b'user mode')
        svc.json('domain', 'stop', 'vm')
        with open(svc.json('volume', 'info', 'vm:root')['path'], 'rb') as f:
            assert f.read(9) == b'user mode'
        children = sh.children_of(proc.pid)
        assert len(children) == 2  # the same daemon split
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_fuzzing_leaves_daemon_answering(service, rig):
    import random
    rng = random.Random(1234)
    methods = ['admin.pool.List', 'admin.pool.Info', 'admin.pool.Add',
               'admin.vm.volume.Create', 'admin.vm.volume.Info',
               'admin.vm.volume.Resize', 'admin.vm.Start', 'admin.vm.Stop',
               'admin.vm.volume.Remove', 'nope', '']
    values = [None, 1, -1, 1.5, 'x', '../../etc', [], {}, [1, 2], True,
              'vm:root', 'default', 10 ** 30, 'a' * 3000]

    def request():
        kind = rng.randrange(5)
        if kind == 0:
            return bytes(rng.randrange(256) for _ in range(
                rng.randrange(1, 200))).replace(b'\n', b' ') + b'\n'
        if kind == 1:
            body = json.dumps({'id': 1, 'method': rng.choice(methods),
                               'params': {}})
            return body[:rng.randrange(1, len(body))].encode() + b'\n'
        if kind == 2:
            params = {rng.choice(['volume', 'pool', 'size', 'domain',
                                  'driver', 'options', 'kind']):
                      rng.choice(values) for _ in range(rng.randrange(4))}
            return json.dumps({'id': rng.choice(values),
                               'method': rng.choice(methods + values[:4]),
                               'params': rng.choice([params, params, 5,
                                                     'x', None])},
                              default=str).encode() + b'\n'
        if kind == 3:
            return json.dumps(rng.choice(values)).encode() + b'\n'
        return b'\xff\xfe' + os.urandom(rng.randrange(50)).replace(
            b'\n', b'') + b'\n'

    sent = 0
    while sent < 10000:
        sock, reader = _raw(service)
        batch = [request() for _ in range(200)]
        sock.sendall(b''.join(batch))
        for _ in batch:
            assert reader.readline(), 'daemon closed a connection'
        sent += len(batch)
        sock.close()
    for size in (2 * MiB, 8 * MiB):  # oversized lines
        sock, reader = _raw(service)
        try:
            sock.sendall(b'{"id": 1, "method": "' + b'A' * size)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = reader.readline()
        assert not reply or b'longer than' in reply
        sock.close()
        sent += 1
    assert sent >= 10000
    assert service.json('pool', 'list')[0]['name'] == 'default'
    from volsep.frontend import state
    from lxml import etree
    doc = rig.read(f'{service.state_dir}/state/pools.xml')
    assert state.POOLS_SCHEMA.validate(etree.fromstring(doc))
    assert b'name="default"' in doc


def test_dead_root_daemon_stops_the_service(service, rig):
    file_daemon = sh.children_of(service.pid)[0]
    rig.kill(file_daemon)
    assert rig.wait(service.pid) == 1
    service.pid = None
    assert 'a privileged daemon died' in service.output()


def test_a_default_pool_without_reflink_says_so(rig):
    """On ext4 the default file-reflink pool makes full copies: volsepd
    says so on stderr at start-up and pool info reports it."""
    for fs, method in (('ext4', 'copy'), ('xfs', 'reflink')):
        state_dir = sh.fresh_state_dir(fs)
        svc = sh.Service(state_dir, policy=EVERYONE).start()
        try:
            info = svc.json('pool', 'info', 'default')
            assert info['copy_method'] == method
            warned = 'without reflink: snapshots, commits and clones are ' \
                     'full sparse copies' in svc.output()
            assert warned == (method == 'copy'), svc.output()
        finally:
            svc.stop()
            rig.rmtree(state_dir)
