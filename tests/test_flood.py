"""A local user without any policy right cannot take the API down.

Each test starts a real volsepd (root, frontend as 'volsep') with small
limits on its command line. The test process is the unprivileged test
user; other uids (an unnamed outsider uid and 'nobody') are played through
the rig with setpriv. Everything is bounded: fixed counts, deadlines.
"""

import json
import os
import select
import socket
import sys
import threading
import time

import pytest

from tests import service_helpers as sh

MiB = 1 << 20
TEST_USER = os.environ.get('VOLSEP_TEST_USER', 'volsep-test')
# The venv running this suite (tests/run uses VOLSEP_VENV), not a fixed one.
VENV = os.path.dirname(sys.executable)
OUTSIDER_UID = 54321          # no passwd entry, no rule: an outsider
NOBODY_UID = 65534            # a rule allows it admin.pool.List only
EVERYONE = {'rules': [{'users': ['root', TEST_USER, 'volsep'],
                       'allow': ['*']}]}
# The test user is an outsider here: no rule names it.
OUTSIDERS = {'rules': [{'users': ['root'], 'allow': ['*']},
                       {'uids': [NOBODY_UID], 'allow': ['admin.pool.List']}]}
SETPRIV = ['setpriv', '--reuid', '{uid}', '--regid', '{uid}',
           '--clear-groups', '--']


class Service(sh.Service):
    def __init__(self, state_dir, policy, args):
        super().__init__(state_dir, policy=policy)
        self.args = [str(a) for a in args]

    def start(self):
        argv = [f'{VENV}/volsepd', '--state-dir', self.state_dir,
                '--user', sh.SERVICE_USER, '--policy-file',
                self.policy_path, *self.args]
        self.pid = sh.rig.spawn(argv, {'PATH': '/usr/bin:/bin'}, self.log)
        if not sh.wait_until_answering(self.socket):
            raise AssertionError(f'volsepd did not start: {self.output()}')
        return self

    def cli(self, *args, as_uid=None, input_data=None):
        argv = [f'{VENV}/volsep', '--socket', self.socket, *args]
        if as_uid is not None:
            if as_uid != 0:
                argv = [a.format(uid=as_uid) for a in SETPRIV] + argv
            rc, out, err = sh.rig.run(argv, env={'PATH': '/usr/bin:/bin'},
                                      input_data=input_data)
            return rc, out.decode(), err.decode()
        import subprocess
        proc = subprocess.run(argv, capture_output=True, input=input_data,
                              env={'PATH': '/usr/bin:/bin'}, timeout=120)
        return proc.returncode, proc.stdout.decode(errors='replace'), \
            proc.stderr.decode(errors='replace')


@pytest.fixture
def start(rig):
    started = []

    def make(policy, *args):
        svc = Service(sh.fresh_state_dir(), policy, args).start()
        started.append(svc)
        return svc
    yield make
    for svc in started:
        if svc.pid is not None:
            svc.stop()
        rig.rmtree(svc.state_dir)


def _connect(svc):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(svc.socket)
    return sock


def _request(method, **params):
    return json.dumps({'id': 1, 'method': method,
                       'params': params}).encode() + b'\n'


def _watch(socks, seconds, closed_wanted=None):
    """Read what each socket receives until it reaches end of file, for
    ``seconds`` or until ``closed_wanted`` of them are closed (then half
    a second more, to see that no other one closes). Returns
    {sock: bytes received} for the closed ones."""
    received = {s: b'' for s in socks}
    closed = {}
    deadline = time.monotonic() + seconds
    settle = None
    while True:
        now = time.monotonic()
        if closed_wanted is not None and len(closed) >= closed_wanted and \
                settle is None:
            settle = now + 0.5
        end = min(deadline, settle) if settle else deadline
        if now >= end:
            return closed
        open_socks = [s for s in socks if s not in closed]
        if not open_socks:
            return closed
        ready, _, _ = select.select(open_socks, [], [], end - now)
        for s in ready:
            try:
                data = s.recv(65536)
            except ConnectionError:
                data = b''
            if data:
                received[s] += data
            else:
                closed[s] = received[s]


def _classes(data):
    return [json.loads(line)['error']['class']
            for line in data.splitlines() if line.strip()]


# A second outsider uid, run through the rig: it opens N connections,
# reports how many were refused, and holds the rest until it is killed.
_HOLDER = r'''
import select, socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    socks.append(s)
time.sleep(2)
refused = 0
for s in socks:
    if select.select([s], [], [], 0)[0]:
        data = s.recv(4096)
        if b'TooManyConnections' in data:
            refused += 1
print(f'refused={refused} open={count - refused}', flush=True)
time.sleep(120)
'''


def test_flood_is_bounded_and_trusted_callers_still_answered(start, rig):
    per_uid, total, reserved = 6, 12, 4
    svc = start(OUTSIDERS, '--max-connections-per-uid', per_uid,
                '--max-connections', total,
                '--reserved-connections', reserved,
                '--idle-timeout', 60, '--request-timeout', 60)
    # 1. One outsider uid (this process) opens 30 idle connections: all
    # but its per-uid share are refused at once, with one error line.
    flood = [_connect(svc) for _ in range(30)]
    closed = _watch(flood, 10, closed_wanted=30 - per_uid)
    assert len(closed) == 30 - per_uid, \
        f'{len(closed)} of 30 flood connections closed, wanted ' \
        f'{30 - per_uid}'
    assert all(_classes(data) == ['TooManyConnections']
               for data in closed.values()), list(closed.values())[:3]
    held = [s for s in flood if s not in closed]

    # 2. A second outsider uid gets only what is left of the outsiders'
    # share (total - reserved), not its own per-uid share.
    log = f'{svc.state_dir}.holder.log'
    holder = rig.spawn(
        [a.format(uid=OUTSIDER_UID) for a in SETPRIV] +
        [f'{VENV}/python', '-I', '-c', _HOLDER, svc.socket, '10'],
        {'PATH': '/usr/bin:/bin'}, log)
    stop = threading.Event()
    try:
        report = b''
        for _ in range(150):
            report = rig.read(log) if os.path.exists(log) else b''
            if b'refused=' in report:
                break
            time.sleep(0.1)
        outsiders_left = total - reserved - per_uid
        assert f'refused={10 - outsiders_left} ' \
               f'open={outsiders_left}'.encode() in report, report

        # 3. While the outsiders hold every slot open to them and this
        # process keeps hammering the socket with new connections, root
        # and a policy-allowed user are answered quickly.
        hammered = []

        def hammer():
            for _ in range(3000):
                if stop.is_set():
                    return
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(5)
                try:
                    s.connect(svc.socket)
                    try:
                        s.sendall(_request('admin.pool.List'))
                    except OSError:
                        pass  # refused and closed before the request
                    hammered.append(s.recv(4096))
                except OSError:
                    pass
                finally:
                    s.close()
        hammer_thread = threading.Thread(target=hammer, daemon=True)
        hammer_thread.start()
        for uid in (0, NOBODY_UID, 0, NOBODY_UID):
            began = time.monotonic()
            rc, out, err = svc.cli('pool', 'list', '-f', 'json', as_uid=uid)
            elapsed = time.monotonic() - began
            assert rc == 0, (uid, out, err)
            assert json.loads(out)[0]['name'] == 'default'
            assert elapsed < 10, (uid, elapsed)
        stop.set()
        hammer_thread.join(30)
        assert hammered and all(b'TooManyConnections' in r
                                for r in hammered if r), hammered[:3]
        # The held connections were never closed under the flood.
        assert _watch(held, 0.2) == {}
    finally:
        stop.set()
        rig.kill(holder)
        rig.wait(holder)
        for s in flood:
            s.close()
    # 4. Closed connections give their slots back.
    for _ in range(50):
        sock = _connect(svc)
        sock.sendall(_request('admin.pool.List'))
        reply = sock.recv(4096)
        sock.close()
        if b'PermissionDenied' in reply:
            break
        time.sleep(0.1)
    assert b'PermissionDenied' in reply, reply
    assert 'refused' in svc.output()


TIMEOUTS = ('--idle-timeout', 1.5, '--request-timeout', 1.5,
            '--max-request-bytes', 65536, '--stream-timeout', 2)


def test_partial_lines_are_cut_off(start):
    svc = start(EVERYONE, *TIMEOUTS)
    # A 1 MB partial line (below today's 1 MiB line limit) is refused as
    # soon as it passes max-request-bytes, not held.
    sock = _connect(svc)
    began = time.monotonic()
    try:
        sock.sendall(b'{"id": 1, "method": "' + b'A' * 1000000)
    except (BrokenPipeError, ConnectionResetError):
        pass
    closed = _watch([sock], 5, closed_wanted=1)
    assert sock in closed, 'a 1 MB partial line is still held'
    assert b'request longer than 65536 bytes' in closed[sock]
    assert time.monotonic() - began < 1.4  # the limit, not the timeout
    sock.close()

    # A short line that never ends is closed after --request-timeout.
    sock = _connect(svc)
    sock.sendall(b'{"id": 1, "method": "admin.pool.List"')
    began = time.monotonic()
    closed = _watch([sock], 6, closed_wanted=1)
    elapsed = time.monotonic() - began
    assert sock in closed, 'a stuck partial line is still held'
    assert _classes(closed[sock]) == ['Timeout']
    assert 1.0 < elapsed < 5, elapsed
    sock.close()

    # A slow client that completes its line in time is answered.
    sock = _connect(svc)
    line = _request('admin.pool.List')
    for piece in (line[:10], line[10:20], line[20:]):
        sock.sendall(piece)
        time.sleep(0.4)
    assert json.loads(sock.makefile('rb').readline())['result'][0][
        'name'] == 'default'
    sock.close()


def test_idle_connections_closed_but_not_subscriptions(start):
    svc = start(EVERYONE, *TIMEOUTS)
    subscriber = _connect(svc)
    subscriber.sendall(_request('admin.Events', patterns=['volume-*']))
    events = subscriber.makefile('rb')
    assert json.loads(events.readline())['result']['subscribed']
    silent = _connect(svc)                # never sends anything
    used = _connect(svc)                  # one request, then idle
    used.sendall(_request('admin.pool.List'))
    began = time.monotonic()
    closed = _watch([silent, used], 6, closed_wanted=2)
    elapsed = time.monotonic() - began
    assert set(closed) == {silent, used}, 'idle connections still open'
    assert _classes(closed[silent]) == ['Timeout']
    assert json.loads(closed[used].splitlines()[0])['result']
    assert _classes(b'\n'.join(closed[used].splitlines()[1:])) == ['Timeout']
    assert 1.0 < elapsed < 5, elapsed
    # The subscription, idle for longer than the idle timeout, still
    # delivers events.
    time.sleep(1)
    svc.json('volume', 'create', 'vm:root', '--pool', 'default', '--size',
             '1M')
    event = json.loads(events.readline())
    assert (event['event'], event['subject']) == ('volume-created',
                                                  'vm:root')
    subscriber.close()


def _tree(rig, svc):
    """Names, sizes and digests below the volume's directory (retried
    when a file vanishes during the walk, as an export snapshot may)."""
    volume_dir = f'{svc.state_dir}/pools/default/vm/root'
    for _ in range(20):
        try:
            return {name: (entry[1], entry[-1])
                    for name, entry in rig.tree(volume_dir).items()}
        except FileNotFoundError:
            time.sleep(0.05)
    raise AssertionError(f'{volume_dir} keeps changing')


def _begin_import(svc, size):
    sock = _connect(svc)
    sock.sendall(_request('admin.vm.volume.Import', volume='vm:root',
                          size=size, force=True))
    reader = sock.makefile('rb')
    assert json.loads(reader.readline())['result']['ready'] is True
    return sock


def test_stalled_import_is_aborted_and_the_volume_freed(start, rig,
                                                        tmp_path):
    svc = start(EVERYONE, *TIMEOUTS)
    svc.json('volume', 'create', 'vm:root', '--pool', 'default', '--size',
             '4M')
    before = _tree(rig, svc)
    size = 4 * MiB
    for sent in (0, MiB, size):   # nothing, part, all but the end line
        sock = _begin_import(svc, size)
        sock.sendall(b's' * sent)
        began = time.monotonic()
        # While it stalls, the volume is busy for everyone else.
        rc, out, _ = svc.cli('volume', 'import', 'vm:root', '-', '--size',
                             '4M', '-f', 'json', input_data=b'')
        assert rc == 1 and json.loads(out)['error'] == 'VolumeBusy', out
        closed = _watch([sock], 10, closed_wanted=1)
        assert sock in closed, f'stalled import ({sent} bytes) not aborted'
        assert 1.5 < time.monotonic() - began < 8
        assert b'Timeout' in closed[sock], closed[sock]
        sock.close()
        assert _tree(rig, svc) == before, f'volume changed ({sent} bytes)'

    # Another client's import now succeeds.
    data = os.urandom(size)
    (tmp_path / 'in.raw').write_bytes(data)
    assert svc.json('volume', 'import', 'vm:root',
                    str(tmp_path / 'in.raw'))['size'] == size
    import hashlib
    path = svc.json('volume', 'info', 'vm:root')['path']
    assert rig.sha256(path) == hashlib.sha256(data).hexdigest()

    # Slow but steady is not stalled: 1 MiB in 8 pieces over about 3.2 s,
    # longer than the 2 s stream timeout, each gap shorter.
    sock = _begin_import(svc, MiB)
    piece = os.urandom(MiB // 8)
    for _ in range(8):
        sock.sendall(piece)
        time.sleep(0.4)
    from volsep.frontend import protocol
    sock.sendall(protocol.END_MARKER)
    reply = json.loads(sock.makefile('rb').readline())
    assert reply['result']['size'] == MiB, reply
    sock.close()


def test_stalled_export_is_aborted_and_its_snapshot_removed(start, rig,
                                                           tmp_path):
    svc = start(EVERYONE, *TIMEOUTS)
    size = 16 * MiB
    svc.json('volume', 'create', 'vm:root', '--pool', 'default', '--size',
             '16M')
    data = os.urandom(size)
    (tmp_path / 'in.raw').write_bytes(data)
    svc.json('volume', 'import', 'vm:root', str(tmp_path / 'in.raw'))
    before = _tree(rig, svc)

    sock = _connect(svc)
    sock.sendall(_request('admin.vm.volume.Export', volume='vm:root'))
    header = b''
    while not header.endswith(b'\n'):
        header += sock.recv(1)
    assert json.loads(header)['result']['size'] == size
    assert any(name.startswith('x-') for name in _tree(rig, svc))
    # ... and the reader goes quiet. Its snapshot is removed once nothing
    # has been consumed for --stream-timeout seconds.
    began = time.monotonic()
    for _ in range(100):
        if _tree(rig, svc) == before:
            break
        time.sleep(0.1)
    assert _tree(rig, svc) == before, 'stalled export still holds its ' \
        'snapshot'
    assert 1.5 < time.monotonic() - began < 9
    received = 0
    sock.settimeout(10)
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += len(chunk)
    assert received < size  # cut off, not completed
    sock.close()

    # A slow but steady reader gets all of it: 2 MiB export read in
    # 256 KiB steps every 0.4 s (over 3 s in all, each gap shorter than
    # the 2 s stream timeout).
    svc.json('volume', 'resize', 'vm:root', '2M', '--force')
    sock = _connect(svc)
    sock.sendall(_request('admin.vm.volume.Export', volume='vm:root'))
    reader = sock.makefile('rb')
    assert json.loads(reader.readline())['result']['size'] == 2 * MiB
    got = b''
    while len(got) < 2 * MiB:
        got += reader.read(256 << 10)
        time.sleep(0.4)
    assert got == data[:2 * MiB]
    sock.close()
