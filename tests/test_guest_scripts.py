"""tests/guest/run on the host: bad input is one clear line and a non-zero
exit before anything boots, and a guest that outlives its timeout is
killed with one line saying so. (The guest itself is tested by
tests/guest, which only the guest collects.)
"""

import os
import subprocess
import sys

import pytest

STAGED = os.environ['VOLSEP_TEST_WORK']
RUN = f'{STAGED}/tests/guest/run'
# A WORK of these tests' own: tests/run boots the suite's guest on the
# staged WORK at the same time, and a second guest must not touch its
# files (.guest-command, .guest-started) nor be mistaken for it.
WORK = f'{STAGED}/guest-scripts'
ENV = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin',
       'VOLSEP_VENV': sys.prefix}


@pytest.fixture(autouse=True, scope='module')
def own_work():
    from tests import rig as rig_module
    rig_module.run(['mkdir', '-p', f'{WORK}/tests/guest'])
    rig_module.run(['cp', f'{STAGED}/tests/guest/inside',
                    f'{WORK}/tests/guest/'])
    rig_module.run(['chmod', '-R', 'a+rX', WORK])


def run_as_root(rig, *args, **env):
    rc, out, err = rig.run(['bash', RUN, *args], env={**ENV, **env},
                           timeout=600)
    return rc, out.decode(), err.decode()


def test_only_root_may_boot_a_guest():
    proc = subprocess.run(['bash', RUN, WORK], capture_output=True,
                          text=True, env=ENV, check=False)
    assert proc.returncode == 2
    assert proc.stderr == 'tests/guest/run: must run as root\n'


@pytest.mark.parametrize('args, message', [
    ((), 'usage: tests/guest/run WORK [pytest arguments]'),
    (('/nonexistent-work',), 'no directory /nonexistent-work'),
    (('/usr',), 'no /usr/tests/guest/inside'),
])
def test_a_bad_work_directory_is_one_line(rig, args, message):
    rc, out, err = run_as_root(rig, *args)
    assert rc == 2
    assert err.count('\n') == 1 and message in err, err


@pytest.mark.parametrize('timeout', ['', 'soon', '-5', '0', '10s'])
def test_a_bad_timeout_is_refused_before_booting(rig, timeout):
    command_file = f'{WORK}/.guest-command'
    before = rig.lstat(command_file) if os.path.lexists(command_file) \
        else None
    rc, out, err = run_as_root(rig, WORK, VOLSEP_GUEST_TIMEOUT=timeout)
    assert rc == 2
    assert err == ('tests/guest/run: VOLSEP_GUEST_TIMEOUT must be a '
                   f'positive whole number of seconds, not "{timeout}"\n')
    after = rig.lstat(command_file) if os.path.lexists(command_file) \
        else None
    assert after == before   # nothing was written, so nothing booted


def test_a_guest_past_its_timeout_is_killed_with_one_line(rig):
    rc, out, err = run_as_root(rig, WORK, VOLSEP_GUEST_TIMEOUT='3')
    assert rc == 1
    assert 'tests/guest/run: the guest timed out after' in err
    assert '(VOLSEP_GUEST_TIMEOUT=3)' in err
    rc, ps, _ = rig.run(['ps', '-eo', 'args'])
    assert not [line for line in ps.decode().splitlines()
                if 'qemu-system' in line and WORK in line]


@pytest.mark.parametrize('args, expected', [
    ((), ''),
    (('-k', 'a b', 'tests/guest/test_x.py'),
     " -k a\\ b tests/guest/test_x.py"),
])
def test_the_guest_gets_exactly_the_arguments_given(rig, args, expected):
    # No argument must stay none: an empty one made the guest's pytest
    # collect all of WORK (the host's private directories included).
    rc, out, err = run_as_root(rig, WORK, *args, VOLSEP_GUEST_TIMEOUT='1')
    assert rc == 1, err
    _, command, _ = rig.run(['cat', f'{WORK}/.guest-command'])
    last = command.decode().splitlines()[-1]
    assert last == (f'exec bash {WORK}/tests/guest/inside {WORK}'
                    + expected)
