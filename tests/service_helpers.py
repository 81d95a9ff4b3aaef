"""Run a real volsepd (started as root, frontend dropped to 'volsep') and
drive it with the real CLI from the unprivileged test process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

from tests import procs
from tests import rig
from tests.conftest import ROOTS

# The venv tests/run runs pytest from (VOLSEP_VENV), not a fixed one: the
# volsepd under test must be the code being tested.
VENV = os.path.dirname(sys.executable)
SERVICE_USER = 'volsep'


class Service:
    def __init__(self, state_dir, policy=None, extra_args=()):
        self.state_dir = state_dir
        self.extra_args = list(extra_args)
        self.socket = f'{state_dir}/volsepd.sock'
        self.log = f'{state_dir}.log'
        self.policy_path = None
        if policy is not None:
            self.policy_path = f'{state_dir}.policy.json'
            rig.write(self.policy_path, json.dumps(policy).encode(), 0o644)
        self.pid = None

    def argv(self):
        argv = [f'{VENV}/volsepd', '--state-dir', self.state_dir,
                '--user', SERVICE_USER]
        if self.policy_path:
            argv += ['--policy-file', self.policy_path]
        return argv + self.extra_args

    def start(self):
        self.pid = rig.spawn(self.argv(), {'PATH': '/usr/bin:/bin'},
                             self.log)
        if not wait_until_answering(self.socket):
            raise AssertionError(f'volsepd did not start: {self.output()}')
        return self

    def stop(self, sig=signal.SIGTERM):
        rig.kill(self.pid, sig)
        status = rig.wait(self.pid)
        self.pid = None
        return status

    def output(self):
        return rig.read(self.log).decode(errors='replace')

    def cli(self, *args, as_root=False, input_data=None):
        argv = [f'{VENV}/volsep', '--socket', self.socket] + list(args)
        if as_root:
            rc, out, err = rig.run(argv, env={'PATH': '/usr/bin:/bin'},
                                   input_data=input_data)
            return rc, out.decode(), err.decode()
        proc = subprocess.run(argv, capture_output=True, input=input_data,
                              env={'PATH': '/usr/bin:/bin'})
        return proc.returncode, proc.stdout.decode(errors='replace'), \
            proc.stderr.decode(errors='replace')

    def json(self, *args, **kwargs):
        rc, out, err = self.cli(*args, '-f', 'json', **kwargs)
        assert rc == 0, (args, rc, out, err)
        return json.loads(out)


def wait_until_answering(path, seconds=30):
    """The socket accepts connections from listen() on, before the drop
    and start-up are done; ready means it answers a request."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_UNIX)
        probe.settimeout(seconds)
        try:
            probe.connect(path)
            probe.sendall(b'{"id": 0, "method": "admin.pool.List"}\n')
            if probe.makefile('rb').readline():
                return True
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()
    return False


def fresh_state_dir(fs='xfs'):
    mount = ROOTS[fs].rsplit('/', 1)[0]
    return f'{mount}/svc-{uuid.uuid4().hex[:10]}'


status_of = procs.status
children_of = procs.children
