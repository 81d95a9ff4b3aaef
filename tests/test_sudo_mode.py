"""Sudo mode for real: volsepd started as 'volsep' (never root) starts its
root daemons through /usr/bin/sudo and the shipped sudoers rule.

The rule (etc/sudoers.d/volsep, with this venv's path) and the root side's
fixed configuration (/etc/volsep/privileged.conf, written by `volsepd
--prepare`) are installed for the module and put back afterwards.
"""

import hashlib
import json
import os
import pwd
import time

import pytest

from tests import procs
from tests import rig
from tests import service_helpers
from tests.service_helpers import VENV

SUDOERS = '/etc/sudoers.d/volsep-tests'   # no '.': sudo skips such names
ROOT_CONF = '/etc/volsep/privileged.conf'
HELPER_CONF = '/etc/volsep/volsep.conf'
SETPRIV = '/usr/bin/setpriv'
FILE_CAPS = (1 << 1) | (1 << 2) | (1 << 3)  # DAC_OVERRIDE, READ_SEARCH, FOWNER


def as_user(user, *argv, no_new_privs=False):
    """argv for running ``argv`` as ``user`` from the root rig."""
    extra = ['--no-new-privs'] if no_new_privs else []
    return [SETPRIV, f'--reuid={user}', f'--regid={user}', '--init-groups',
            *extra, *argv]


def exists(path):
    return rig.run(['test', '-e', path])[0] == 0


def _set_aside(path):
    if exists(path) and not exists(path + '.volsep-tests-saved'):
        rig.rename(path, path + '.volsep-tests-saved')


def _put_back(path):
    rig.run(['rm', '-f', path])
    if exists(path + '.volsep-tests-saved'):
        rig.rename(path + '.volsep-tests-saved', path)


@pytest.fixture(scope='module')
def sudo_rule():
    assert os.path.exists('/usr/bin/sudo'), 'tests/install installs sudo'
    shipped = os.path.join(os.environ['VOLSEP_TEST_ETC'], 'sudoers.d',
                           'volsep')
    with open(shipped) as f:
        rule = f.read().replace('/opt/volsep/venv/bin', VENV)
    rig.write(SUDOERS, rule.encode(), 0o440)
    rc, _, err = rig.run(['/usr/sbin/visudo', '-cf', SUDOERS])
    assert rc == 0, err
    rig.mkdir('/etc/volsep', 0o755)
    for path in (ROOT_CONF, HELPER_CONF):
        _set_aside(path)
    yield
    for path in (ROOT_CONF, HELPER_CONF):
        _put_back(path)
    rig.run(['rm', '-f', SUDOERS])


class SudoService(service_helpers.Service):
    def __init__(self, state_dir, user='volsep', no_new_privs=False):
        # The test process is the admin's client here.
        super().__init__(state_dir, policy={'rules': [{
            'users': [os.environ['VOLSEP_TEST_USER']], 'allow': ['*']}]})
        self.user = user
        self.no_new_privs = no_new_privs
        self.socket = f'{state_dir}/run/volsepd.sock'

    def argv(self):
        return as_user(self.user, f'{VENV}/volsepd', '--state-dir',
                       self.state_dir, '--privsep-start', 'sudo',
                       '--policy-file', self.policy_path,
                       no_new_privs=self.no_new_privs)

    def run_to_exit(self):
        """Start, expecting volsepd to refuse: (status, output)."""
        self.pid = rig.spawn(self.argv(), {'PATH': '/usr/bin:/bin'},
                             self.log)
        status = rig.wait(self.pid, 60)
        self.pid = None
        return status, self.output()


def prepare(state_dir, user='volsep', keep_root_conf=False):
    if not keep_root_conf:   # one written for another test's directory
        rig.run(['rm', '-f', ROOT_CONF])
    rc, out, err = rig.run([f'{VENV}/volsepd', '--prepare', '--state-dir',
                            state_dir, '--user', user],
                           env={'PATH': '/usr/bin:/bin'})
    assert rc == 0, err
    return err.decode()


def _helper_daemons():
    """pid -> status of every process running volsep-privsep-helper."""
    found = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/cmdline', 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if any(arg.endswith(b'/volsep-privsep-helper') for arg in argv):
            found[int(name)] = (argv, procs.status(name))
    return found


def _wait_gone(pids, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(os.path.exists(f'/proc/{pid}') for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def sudo_service(sudo_rule):
    state_dir = service_helpers.fresh_state_dir()
    prepare(state_dir)
    service = SudoService(state_dir)
    before = set(_helper_daemons())
    service.start()
    service.daemons = {pid: found for pid, found in _helper_daemons().items()
                       if pid not in before}
    yield service
    if service.pid is not None:
        service.stop()
    assert _wait_gone(service.daemons)
    rig.rmtree(state_dir)


def test_prepare_makes_a_root_owned_directory_and_the_root_config(sudo_rule):
    state_dir = service_helpers.fresh_state_dir()
    message = prepare(state_dir)
    assert f'wrote {ROOT_CONF}' in message
    uid = pwd.getpwnam('volsep').pw_uid
    owners = {path: rig.lstat(f'{state_dir}{path}')['uid']
              for path in ('', '/pools', '/state', '/run', '/volsepd.lock')}
    assert owners == {'': 0, '/pools': 0, '/state': uid, '/run': uid,
                      '/volsepd.lock': uid}
    text = rig.read(ROOT_CONF).decode()
    assert f'allowed_roots = {state_dir}/pools\n' in text
    assert rig.lstat(ROOT_CONF)['uid'] == 0
    # Kept, not overwritten, the next time.
    assert 'kept' in prepare(state_dir, keep_root_conf=True)
    rig.run(['rm', '-f', ROOT_CONF])
    rig.rmtree(state_dir)


def test_a_sudo_mode_service_runs_its_root_side_through_sudo(sudo_service,
                                                          tmp_path):
    service = sudo_service
    frontend = procs.status(service.pid)
    volsep_uid = str(pwd.getpwnam('volsep').pw_uid)
    assert frontend['Uid'].split() == [volsep_uid] * 4
    assert int(frontend['CapEff'], 16) == 0
    # Two root daemons, one per context, started by sudo for this service.
    contexts = sorted(argv[argv.index(b'--privsep_context') + 1]
                      for argv, _ in service.daemons.values())
    assert contexts == [b'volsep.privileged.contexts.file_ops',
                        b'volsep.privileged.contexts.long_jobs']
    for _, status in service.daemons.values():
        assert status['Uid'].split() == ['0'] * 4
        assert int(status['CapEff'], 16) == FILE_CAPS

    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '4M')
    data = os.urandom(4 << 20)
    rc, out, err = service.cli('volume', 'import', 'vm:root', '-',
                               '--size', str(len(data)), input_data=data)
    assert rc == 0, err
    started = service.json('domain', 'start', 'vm')
    assert started and all(
        d['path'].startswith(f'{service.state_dir}/pools/default/')
        for d in started), started
    rig.pwrite(started[0]['path'], 0, b'written by the guest')
    rc, out, err = service.cli('domain', 'stop', 'vm')
    assert rc == 0, err
    export = tmp_path / 'exported.raw'
    rc, out, err = service.cli('volume', 'export', 'vm:root', str(export))
    assert rc == 0, err
    expected = b'written by the guest' + data[20:]
    assert hashlib.sha256(export.read_bytes()).digest() == \
        hashlib.sha256(expected).digest()
    # Made by the root side: every pool file is root's, not the service's.
    rc, out, _ = rig.run(['find', f'{service.state_dir}/pools', '-mindepth',
                          '1', '-not', '-uid', '0'])
    assert rc == 0 and out == b'', out
    rc, out, _ = rig.run(['find', f'{service.state_dir}/pools', '-type',
                          'f'])
    assert out.count(b'\n') >= 2, out
    verified = service.json('audit', 'verify')
    assert verified['ok'] and verified['verified'] > 3, verified
    assert verified['problem'] is None
    # Records name the service as the caller, not init (the helper's
    # daemon is orphaned once sudo returns).
    records = [json.loads(line) for line in rig.read(
        f'{service.state_dir}/audit.log').decode().splitlines()]
    assert {(r['caller']['pid'], r['caller']['uid'])
            for r in records[-5:]} == {(service.pid, int(volsep_uid))}


def test_the_service_user_gets_nothing_else_from_sudo(sudo_service):
    """Through real sudo, as 'volsep': the helper refuses any other
    argument shape, and no other command is granted."""
    helper = f'{VENV}/volsep-privsep-helper'
    hostile = [
        [helper, 'files', '--privsep_context', 'os.system',
         '--privsep_sock_path', '/tmp/tmpx/privsep.sock'],
        [helper, 'files', '--privsep_context',
         'volsep.privileged.contexts.file_ops', '--privsep_sock_path',
         '/etc/shadow'],
        [helper, 'files', '--config-file', '/tmp/evil.conf',
         '--privsep_context', 'volsep.privileged.contexts.file_ops',
         '--privsep_sock_path', '/tmp/tmpx/privsep.sock'],
    ]
    for argv in hostile:
        rc, _, err = rig.run(as_user('volsep', '/usr/bin/sudo', '-n', '--',
                                     *argv))
        assert rc == 2 and b'refused' in err, (argv, rc, err)
    for argv in (['/bin/true'], [f'{VENV}/privsep-helper', '--help'],
                 [f'{VENV}/python', '-c', 'pass']):
        rc, _, err = rig.run(as_user('volsep', '/usr/bin/sudo', '-n', '--',
                                     *argv))
        assert rc == 1 and b'sudo' in err, (argv, rc, err)


def test_stopping_the_service_ends_its_root_daemons(sudo_rule):
    state_dir = service_helpers.fresh_state_dir()
    prepare(state_dir)
    before = set(_helper_daemons())
    service = SudoService(state_dir).start()
    started = set(_helper_daemons()) - before
    assert len(started) == 2
    assert service.stop() == 0
    assert _wait_gone(started)
    rig.rmtree(state_dir)


def test_sudo_mode_refuses_what_would_not_work(sudo_rule, tmp_path):
    state_dir = service_helpers.fresh_state_dir()
    # Not prepared: says how to prepare, and creates nothing.
    status, output = SudoService(state_dir).run_to_exit()
    assert status != 0 and '--prepare' in output, output
    assert not exists(state_dir)
    prepare(state_dir)
    # As root: sudo mode is for a service that is not.
    rc, _, err = rig.run([f'{VENV}/volsepd', '--state-dir', state_dir,
                          '--privsep-start', 'sudo'],
                         env={'PATH': '/usr/bin:/bin'})
    assert rc != 0 and b'own user' in err, err
    # Under NoNewPrivileges sudo cannot work: one clear line, no hang.
    status, output = SudoService(state_dir, no_new_privs=True).run_to_exit()
    assert status == 1 and 'no_new_privs' in output, output
    assert not exists(f'{state_dir}/pools/default')
    rig.rmtree(state_dir)


def test_a_user_without_the_sudoers_rule_fails_at_once(sudo_rule):
    """The test user has no rule: sudo -n fails instead of asking for a
    password, and volsepd exits with a message naming the rule."""
    user = os.environ['VOLSEP_TEST_USER']
    state_dir = service_helpers.fresh_state_dir()
    prepare(state_dir, user)
    started = time.monotonic()
    status, output = SudoService(state_dir, user=user).run_to_exit()
    assert status == 1 and 'sudoers' in output, output
    assert time.monotonic() - started < 30
    rig.rmtree(state_dir)
