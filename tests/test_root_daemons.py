"""The root daemons themselves: which requests they run, what they hold,
and what happens when one stops answering."""

import os
import signal
import uuid

import pytest

from tests import service_helpers as sh
from tests.test_service import service  # noqa: F401  (the fixture)
from volsep.privileged import contexts
from volsep.privileged import errors
from volsep.privileged import files


def _call(ctx, name):
    return ctx.channel.remote_call(name, (), {}, 20)


@pytest.mark.parametrize('ctx', contexts.ALL, ids=lambda c: c.cfg_section)
def test_a_name_that_is_no_entrypoint_is_refused_before_any_import(ctx):
    # A module that does not exist is refused as not an entrypoint, not
    # reported missing: nothing was looked up.
    for name in ('nosuchmodule_for_volsep.x', 'os.system',
                 'volsep.privileged.paths.split_beneath_root',
                 'volsep.privileged.files.os', ''):
        with pytest.raises(errors.UnknownEntrypoint):
            _call(ctx, name)


def test_requests_that_once_wedged_the_daemon_are_answered():
    """venv's __main__ raised SystemExit at import and ended the worker
    thread without a reply; a few of those wedged the daemon for good."""
    for ctx in contexts.ALL:
        for _ in range(3 * 16):   # more than a pool of worker threads
            with pytest.raises(errors.UnknownEntrypoint):
                _call(ctx, 'venv.__main__.x')
    assert files.ping() is True


def _sockets(targets):
    return {fd for fd, target in targets.items()
            if target.startswith('socket:')}


def test_root_daemons_hold_only_their_own_channel(service, rig):
    """Neither daemon keeps the API's listening socket, nor the other
    daemon's channel: two sockets each (its privsep channel and its
    descriptor handover socket), none shared, and besides stdio only
    /dev/null, the audit log they write, and the allowed roots they walked
    once (privileged/roots.py)."""
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '1M')
    daemons = sh.children_of(service.pid)
    assert len(daemons) == 2
    allowed = ('/dev/null', f'{service.state_dir}/audit.log',
               f'{service.state_dir}/pools')   # its allowed root
    seen = set()
    for pid in daemons:
        targets = rig.fd_targets(pid)
        assert len(_sockets(targets)) == 2, targets
        ours = {targets[fd] for fd in _sockets(targets)}
        assert not ours & seen, targets
        seen |= ours
        others = {fd: t for fd, t in targets.items()
                  if fd > 2 and fd not in _sockets(targets)}
        assert all(t in allowed for t in others.values()), targets


def test_a_root_daemon_that_stops_answering_stops_the_service(rig):
    state_dir = sh.fresh_state_dir()
    svc = sh.Service(state_dir, extra_args=[
        '--privileged-ping-interval', '0.2',
        '--privileged-ping-timeout', '1']).start()
    daemon = sh.children_of(svc.pid)[1]
    try:
        rig.kill(daemon, signal.SIGSTOP)
        assert rig.wait(svc.pid, 30) == 1
        svc.pid = None
        assert 'did not answer a ping' in svc.output()
    finally:
        rig.kill(daemon, signal.SIGKILL)
        if svc.pid is not None:
            svc.stop()
        rig.rmtree(state_dir)


def _start_refused(rig, state_dir):
    rc, out, err = rig.run([f'{sh.VENV}/volsepd', '--state-dir', state_dir],
                           env={'PATH': '/usr/bin:/bin'}, timeout=60)
    return rc, (out + err).decode()


def test_a_state_directory_someone_else_owns_is_refused(rig):
    """A local user who creates the state directory first (or any
    directory above it) must not get a root service to use it."""
    base = f'{os.environ["VOLSEP_TEST_WORK"]}/own-{uuid.uuid4().hex[:8]}'
    user = os.environ['VOLSEP_TEST_USER']
    rig.mkdir(base, 0o755)
    try:
        planted = f'{base}/planted'
        rig.mkdir(planted, 0o755)
        rc, out, err = rig.run(['chown', user, planted])
        assert rc == 0, err
        rc, output = _start_refused(rig, planted)
        assert rc != 0 and 'belongs to uid' in output, output
        assert rig.tree(planted) == {}
        # Inside a parent that someone else owns.
        rc, output = _start_refused(rig, f'{planted}/deeper')
        assert rc != 0 and 'belongs to uid' in output, output
        # Root's own, but writable by others (no sticky bit).
        open_dir = f'{base}/open'
        rig.mkdir(open_dir, 0o777)
        rc, output = _start_refused(rig, open_dir)
        assert rc != 0 and 'writable by group or others' in output, output
        rc, output = _start_refused(rig, f'{open_dir}/inside')
        assert rc != 0 and 'writable by group or others' in output, output
        assert rig.tree(open_dir) == {}
        # A symlink another user made.
        rc, out, err = rig.run(['setpriv', f'--reuid={user}', '--regid=nogroup',
                                '--clear-groups', 'ln', '-s', base,
                                f'/tmp/volsep-link-{os.getpid()}'])
        assert rc == 0, err
        rc, output = _start_refused(rig, f'/tmp/volsep-link-{os.getpid()}/x')
        assert rc != 0 and 'is a symlink of uid' in output, output
    finally:
        rig.run(['rm', '-f', f'/tmp/volsep-link-{os.getpid()}'])
        rig.rmtree(base)


def test_a_private_state_directory_under_a_sticky_parent_is_accepted(rig):
    """/var/tmp is world-writable but sticky and root's: a root-owned
    0755 directory in it is fine (the README's demo does this)."""
    state_dir = f'/var/tmp/volsep-own-{uuid.uuid4().hex[:8]}'
    svc = sh.Service(state_dir).start()
    try:
        assert svc.json('pool', 'list', as_root=True)[0]['name'] == 'default'
    finally:
        svc.stop()
        rig.rmtree(state_dir)


def test_the_root_side_refuses_pool_files_it_did_not_make(xfs_dir, rig):
    user = os.environ['VOLSEP_TEST_USER']
    rig.write(f'{xfs_dir}/planted', b'x' * 4096)
    rc, out, err = rig.run(['chown', user, f'{xfs_dir}/planted'])
    assert rc == 0, err
    before = rig.tree(xfs_dir)
    for call in (lambda: files.read_at(f'{xfs_dir}/planted', 0, 10),
                 lambda: files.clone(f'{xfs_dir}/planted', f'{xfs_dir}/c'),
                 lambda: files.write_at(f'{xfs_dir}/planted', 0, b'y')):
        with pytest.raises(errors.PathRefused, match='owned by uid'):
            call()
    assert rig.tree(xfs_dir) == before


def test_a_state_directory_made_by_someone_else_in_the_window_is_refused(
        outside_dir, rig):
    """Found by review: a local user who creates the state directory
    between volsepd's check and its makedirs (in a sticky parent), with a
    symlink inside, must not get a root directory chowned. The window is
    forced; the attacker's steps run unprivileged (uid 65534)."""
    import sys
    import textwrap
    sticky = f'{outside_dir}/vartmp'
    victim = f'{outside_dir}/victim'
    rig.mkdir(sticky, 0o755)
    rig.run(['chmod', '1777', sticky])
    rig.mkdir(victim, 0o700)
    script = textwrap.dedent(f'''
        import os
        from volsep.frontend import daemon
        from volsep.privileged import ownership
        state = {sticky!r} + '/volsep'
        real = ownership.check
        def check(path, uid):
            if not os.path.exists(state):
                real(path, uid)                # passes: nothing there yet
                pid = os.fork()                # the attacker, in the window
                if pid == 0:
                    os.setgid(65534); os.setuid(65534)
                    os.mkdir(state, 0o777)
                    os.symlink({victim!r}, state + '/state')
                    os._exit(0)
                os.waitpid(pid, 0)
                return
            real(path, uid)
        ownership.check = check
        try:
            daemon._prepare_directory(state, 'volsep', True)
            print('accepted')
        except SystemExit as err:
            print('refused', err)
    ''')
    rc, out, err = rig.run([sys.executable, '-c', script])
    assert rc == 0, err
    assert out.decode().startswith('refused'), out
    assert rig.lstat(victim)['uid'] == 0


def test_the_sudo_helper_serves_the_guarded_daemon(tmp_path):
    """Found by review: the sudo start method's helper ran oslo.privsep's
    stock daemon, which imports a requested module before checking it. Run
    as the test user with SUDO_UID set (what sudo would leave), its daemon
    refuses unknown names before any import and stays up."""
    import socket
    import struct
    import subprocess
    import sys
    import tempfile
    from oslo_privsep import comm
    d = tempfile.mkdtemp(prefix='tmp', dir='/tmp')      # 0700, ours
    sock_path = f'{d}/privsep.sock'
    conf = f'{d}/volsep.conf'   # stands in for /etc/volsep/volsep.conf
    with open(conf, 'w') as f:  # an unprivileged daemon keeps no caps
        f.write('[volsep_privileged_files]\ncapabilities =\n')
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    server.listen(1)
    code = ('import sys; from volsep.frontend import privsep_helper as h; '
            f'h.CONFIG_FILE = {conf!r}; '
            'sys.argv = ["volsep-privsep-helper"] + sys.argv[1:]; '
            'sys.exit(h.main())')
    helper = subprocess.Popen(
        [sys.executable, '-c', code, 'files', '--privsep_context',
         'volsep.privileged.contexts.file_ops', '--privsep_sock_path',
         sock_path], env={**os.environ, 'SUDO_UID': str(os.getuid())},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.settimeout(20)
    conn, _ = server.accept()
    daemon_pid = struct.unpack('3i', conn.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    # First on the connection, before any privsep message: the daemon's
    # descriptor handover socket (guard.start_through_helper takes it so).
    mark, fds, _, _ = socket.recv_fds(conn, 1, 1)
    assert mark == b'H' and len(fds) == 1
    assert os.fstat(fds[0]).st_mode & 0o170000 == 0o140000   # a socket
    os.close(fds[0])
    channel = comm.ClientChannel(conn)
    try:
        for name in ('os.system', 'venv.__main__.x', 'venv.__main__.x'):
            reply = channel.send_recv((comm.Message.CALL.value, name, (),
                                       {}), 10)
            assert reply[1] == 'volsep.privileged.errors.UnknownEntrypoint'
        reply = channel.send_recv((comm.Message.CALL.value,
                                   'volsep.privileged.files.ping', (), {}),
                                  10)
        # Still serving, and a registered name reaches its entrypoint
        # (which, run as the test user, finds the root configuration not
        # its own).
        assert reply[0] == comm.Message.RET or \
            reply[1] == 'volsep.privileged.errors.ConfigurationError', reply
    finally:
        conn.close()
        server.close()
        try:
            os.kill(daemon_pid, 9)
        except ProcessLookupError:
            pass
        helper.wait(10)


def test_calls_waiting_on_a_daemon_killed_with_requests_unread_fail():
    """Found by tests/test_chaos.py: a root daemon SIGKILLed with a request
    still unread resets its channel; oslo.privsep's reader thread then dies
    of ECONNRESET without failing the waiting call, which waited for good
    and kept volsepd from exiting. The watchdog's check fails it."""
    import socket
    import threading

    from oslo_privsep import comm

    from volsep.frontend import daemon

    ours, theirs = socket.socketpair()
    channel = comm.ClientChannel(ours)
    outcome = []
    caller = threading.Thread(target=lambda: outcome.append(
        _outcome_of(lambda: channel.send_recv(('request',)))))
    caller.start()
    while not channel.outstanding_msgs:
        threading.Event().wait(0.01)
    theirs.close()   # dies with the request unread: ECONNRESET
    channel.reader_thread.join(10)
    assert not channel.reader_thread.is_alive()
    caller.join(0.5)
    assert caller.is_alive(), 'oslo.privsep fails the call itself now'
    assert daemon._channel_down(channel)
    caller.join(10)
    assert not caller.is_alive()
    assert isinstance(outcome[0], OSError), outcome


def _outcome_of(call):
    try:
        return call()
    except Exception as err:  # noqa: BLE001 - the outcome is the test
        return err
