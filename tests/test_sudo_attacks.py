"""Sudo mode against a compromised service user: 'volsep' runs its own
code, calls the sudoers rule with any arguments and resource limits, and
talks to the root daemons it starts (tests/test_sudo_mode.py for the
set-up). None of it may reach outside the allowed roots, act as root
without an audit record, or wedge the root side for good.
"""

import socket
import struct
import textwrap
import threading
import uuid

from tests import rig
from tests import service_helpers
from tests.service_helpers import VENV
from tests.test_sudo_mode import ROOT_CONF
from tests.test_sudo_mode import as_user
from tests.test_sudo_mode import exists
from tests.test_sudo_mode import prepare
from tests.test_sudo_mode import sudo_rule  # noqa: F401 - a fixture
from tests.test_sudo_mode import sudo_service  # noqa: F401 - a fixture

# Starts the two root daemons as volsepd does, through the sudoers rule,
# and offers call(daemon, entrypoint, *args) -> (kind, text).
_ATTACKER = '''
import os, resource, sys
from oslo_config import cfg
from volsep.frontend import privsep_start
from volsep.privileged import contexts

def start():
    cfg.CONF(args=[], project='volsep')
    privsep_start._start_through_sudo()
    return contexts.file_ops.channel, contexts.long_jobs.channel

def call(channel, name, *args):
    try:
        return 'ok', repr(channel.remote_call(name, args, {}, 60))
    except Exception as err:
        return 'err', f'{type(err).__name__}: {err}'[:300]
'''


def as_volsep(code, timeout=300):
    """Run ``code`` (after _ATTACKER) as the compromised service user."""
    script = _ATTACKER + textwrap.dedent(code)
    return rig.run(as_user('volsep', f'{VENV}/python', '-c', script),
                   env={'PATH': '/usr/bin:/bin'}, timeout=timeout)


def test_one_long_argument_does_not_wedge_the_audit_log(sudo_service):
    """A record longer than the tail the next writer reads made the log's
    last line unreadable: every other root daemon, now and after any
    restart, failed every audited call (after running it)."""
    service = sudo_service
    rc, out, err = as_volsep('''
        files, jobs = start()
        print(call(files, 'volsep.privileged.files.stat_path',
                   '/' + 'a' * 100000))
    ''')
    assert rc == 0, err
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '4M')
    verified = service.json('audit', 'verify')
    assert verified['ok'], verified


def test_the_callers_resource_limits_cannot_skip_the_audit(sudo_service):
    """sudo hands the caller's rlimits to the helper: under a small
    RLIMIT_FSIZE the audit append failed (EFBIG, or a torn line) after the
    call had run, so root acted with no record."""
    service = sudo_service
    log = f'{service.state_dir}/audit.log'
    made = f'{service.state_dir}/pools/default/no-record'
    size = rig.lstat(log)['size']
    # Nothing fits, or a line is torn; soft limit alone, or hard too (the
    # helper may refuse to start then).
    for limit in (size, size + 40):
        for hard in (str(limit), 'resource.RLIM_INFINITY'):
            rc, out, err = as_volsep(f'''
                resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {hard}))
                files, jobs = start()
                print(call(files, 'volsep.privileged.files.mkdir',
                           {made!r}))
            ''')
            if exists(made):
                assert made.encode() in rig.read(log), \
                    f'{made} was made as root with no audit record: {out}'
    verified = service.json('audit', 'verify')
    assert verified['ok'], verified


def test_the_helper_connects_only_to_the_callers_own_socket(sudo_rule,
                                                           tmp_path):
    """The helper checked the socket's directory, not the socket: a
    privsep.sock symlink (or a directory swapped after the check) made
    root connect to any socket on the host, here one in a 0700 directory
    of another user, who then had a root daemon to give orders to."""
    private = tmp_path / 'private'
    private.mkdir(mode=0o700)
    target = str(private / 'victim.sock')
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(target)
    listener.listen(1)
    listener.settimeout(20)
    peers = []

    def accept():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        peers.append(struct.unpack('3i', conn.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, 12)))
        conn.close()

    thread = threading.Thread(target=accept)
    thread.start()
    rc, out, err = as_volsep(f'''
        import subprocess, tempfile
        d = tempfile.mkdtemp(dir='/tmp')
        os.symlink({target!r}, d + '/privsep.sock')
        try:
            os.stat({target!r})
            print('reachable')
        except PermissionError:
            pass
        r = subprocess.run(['/usr/bin/sudo', '-n', '--',
                            '{VENV}/volsep-privsep-helper', 'files',
                            '--privsep_context',
                            'volsep.privileged.contexts.file_ops',
                            '--privsep_sock_path', d + '/privsep.sock'])
        os.unlink(d + '/privsep.sock'); os.rmdir(d)
        print('helper', r.returncode)
    ''')
    thread.join(25)
    listener.close()
    assert b'reachable' not in out
    assert not peers, f'root connected to {target}: {peers} ({out})'


def test_a_missing_root_under_a_sticky_directory_cannot_be_raced(sudo_rule):
    """privileged.conf still names STATE/pools after STATE (in the sticky
    /var/tmp) is gone. _open_root checked the chain (a missing path
    passes) and then open()ed the root following symlinks: flipping STATE
    between absent and a symlink to volsep's directory (pools -> TARGET)
    landed root calls in TARGET (any directory: /etc, /root)."""
    state_dir = f'/var/tmp/volsep-attack-{uuid.uuid4().hex[:10]}'
    target = f'/var/tmp/volsep-attack-target-{uuid.uuid4().hex[:10]}'
    prepare(state_dir)
    assert f'allowed_roots = {state_dir}/pools' in rig.read(ROOT_CONF).decode()
    rig.rmtree(state_dir)
    rig.mkdir(target, 0o700)
    try:
        rc, out, err = as_volsep(f'''
            import signal, tempfile, time
            STATE = {state_dir!r}
            evil = tempfile.mkdtemp(dir='/tmp')
            os.chmod(evil, 0o755)
            os.symlink({target!r}, evil + '/pools')
            os.symlink(evil, STATE)
            files, jobs = start()
            print(call(files, 'volsep.privileged.files.ping'))
            flipper = os.fork()
            if flipper == 0:
                while True:
                    try: os.unlink(STATE)
                    except FileNotFoundError: pass
                    try: os.symlink(evil, STATE)
                    except FileExistsError: pass
            deadline = time.monotonic() + 40
            try:
                while time.monotonic() < deadline:
                    kind, what = call(files, 'volsep.privileged.files.mkdir',
                                      STATE + '/pools/volsep-was-here')
                    if kind == 'ok' or 'already exists' in what:
                        print('WON', kind, what)
                        break
            finally:
                os.kill(flipper, signal.SIGKILL)
                os.waitpid(flipper, 0)
                if os.path.islink(STATE):
                    os.unlink(STATE)
                # The audit log (STATE/audit.log) must not have been made
                # in volsep's directory either, where volsep may delete it.
                if os.path.exists(evil + '/audit.log'):
                    print('AUDIT-PLANTED')
        ''')
        assert rc == 0, err
        made = rig.tree(target)
        assert not made, f'root made {made} in {target}: {out}'
        assert b'WON' not in out, out
        assert b'AUDIT-PLANTED' not in out, out
    finally:
        rig.rmtree(target)
        rig.run(['rm', '-rf', state_dir])
        rig.run(['rm', '-f', ROOT_CONF])
