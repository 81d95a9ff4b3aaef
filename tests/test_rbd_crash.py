"""Crash safety of the rbd driver by real SIGKILLs, on the test cluster.

As test_crash.py does for the file drivers: a reference run of each
operation lists its privileged calls that may change something (rbd,
file and qemu-img convert calls); then for each N of them (every one,
except the steps all changes of a stopped volume share, which are killed
after in revert only: see SHARED) a fresh pair of volumes is prepared in
a worker process (tests/rbd_crash_worker.py), the operation is started,
and right after the N-th such call the worker (the frontend) or its file
daemon (the root daemon that talks to Ceph) is SIGKILLed. A restarted
service must then find the volume's committed content exactly old or
exactly new (by checksum, read by the cluster's admin), the head a VM
attaches equal to it once stopped, the ownership lock released or held
by this host while the domain is recorded running, no image or snapshot
beyond the volume's own, nothing in the staging directory, no generation
id used twice; and removing the volumes leaves nothing in the pool.
"""

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import ROOTS

PYTHON = sys.executable   # the venv under test (VOLSEP_VENV)
CEPH = dict(item.split('=', 1)
            for item in os.environ.get('VOLSEP_TEST_CEPH', '').split())
OPERATIONS = ['start', 'stop', 'revert', 'import', 'import-qcow2', 'resize',
              'clone']
PARALLEL = 4


def _worker(rig, spec, tmp_path):
    """Run one worker phase as root; (exit status, its JSON events merged,
    its other output). Started with spawn rather than run, so that more
    workers run at once than the rig has threads."""
    env = {'PATH': '/usr/bin:/bin',
           'PYTHONPATH': os.environ['VOLSEP_TEST_WORK'],
           'PYTHONDONTWRITEBYTECODE': '1',
           'VOLSEP_TEST_USER': os.environ['VOLSEP_TEST_USER'],
           'VOLSEP_PRIVILEGED_CONFIG':
               os.environ['VOLSEP_PRIVILEGED_CONFIG']}
    log = tmp_path / f'worker-{uuid.uuid4().hex[:8]}.log'
    pid = rig.spawn([PYTHON, '-m', 'tests.rbd_crash_worker',
                     json.dumps(spec)], env, str(log))
    deadline = time.monotonic() + 120
    while True:
        try:
            rc = rig.wait(pid, 0.2)
            break
        except subprocess.TimeoutExpired:
            assert time.monotonic() < deadline, f'worker {spec} hangs'
    events, other = {}, []
    for line in log.read_text().splitlines():
        try:
            events.update(json.loads(line))
        except ValueError:
            other.append(line)
    return rc, events, '\n'.join(other)


def _fresh(tmp_path, op):
    """A spec for a pair of volumes of their own; a non-raw import also
    gets a staging directory (beneath an allowed root)."""
    assert CEPH.get('pool'), 'no Ceph cluster: run the suite with tests/run'
    tag = uuid.uuid4().hex[:8]
    state = tmp_path / tag
    state.mkdir()
    spec = {'dom': f'cd{tag}', 'src': f'cs{tag}', 'host': f'h{tag}',
            'state_dir': str(state),
            'pool': CEPH['pool'], 'monitors': CEPH['monitors'],
            'conf': CEPH['conf']}
    if op == 'import-qcow2':
        spec['staging'] = f'{ROOTS["xfs"]}/st-{tag}'
    return spec


def _own_images(spec, running=False):
    """The images the volumes are: anchors and data images (and, while
    the domain runs, the volatile volume's working copy)."""
    dom, src = spec['dom'], spec['src']
    return {f'{dom}+root', f'{dom}+root+d', f'{dom}+tmp',
            f'{src}+root', f'{src}+root+d'} | (
                {f'{dom}+tmp+d'} if running else set())


def _kill_and_check(rig, tmp_path, op, target, kill_at, new):
    """One kill, then the restart after it, checked."""
    spec = _fresh(tmp_path, op)
    rc, events, err = _worker(rig, dict(spec, phase='op', op=op,
                                        kill_at=kill_at, target=target),
                              tmp_path)
    where = f'{op} killed ({target}) after call {kill_at}: {events} {err}'
    assert events.get('killed_after') == kill_at, where
    if target == 'frontend':
        assert rc == -9, where
    old, ids_before = events['old'], events['ids']

    rc, check, err = _worker(rig, dict(spec, phase='check'), tmp_path)
    where += f' / check: {check} {err}'
    assert rc == 0, where
    assert check['reconciled'] in (old, new), where
    if not check['running']:
        assert check['head'] == check['reconciled'], where
        assert check['owner'] is None, where
    else:   # recorded running: this host holds it, copies in place
        assert check['owner'] == spec['host'], where
        assert not check['unattached'], where
    if op == 'stop':   # what the VM wrote is never lost
        assert check['cycled'] == new, where
    else:
        assert check['cycled'] == check['reconciled'], where
    assert check['owner_after'] is None, where
    for names, running in ((check['names'], check['running']),
                           (check['names_after'], False)):
        images = {n.partition('@')[0] for n in names}
        archives = {n for n in images
                    if re.fullmatch(rf'{spec["dom"]}\+root\+a[0-9]+', n)}
        assert images - archives <= _own_images(spec, running), where
        # an archive stays only while it holds a revision
        assert all(any(n.startswith(a + '@') for n in names)
                   for a in archives), where
        snaps = [n for n in names if n.startswith(f'{spec["dom"]}+')
                 and '@' in n]
        assert len(snaps) <= 3, where   # current + 2 revisions
    fresh_ids = set(check['ids_after']) - set(ids_before)
    assert fresh_ids and min(fresh_ids) > max(ids_before), where
    assert check['revisions'] == sorted(set(check['revisions'])), where
    assert check['left'] == [], where
    assert check['staging'] == [], where   # no upload nor raw copy left
    if 'staging' in spec:
        rig.rmtree(spec['staging'])


@pytest.mark.parametrize('op', OPERATIONS)
def test_kill_after_every_privileged_rbd_call(op, tmp_path, rig):
    spec = _fresh(tmp_path, op)
    rc, reference, err = _worker(rig, dict(spec, phase='op', op=op),
                                 tmp_path)
    assert rc == 0 and 'calls' in reference, (reference, err)
    if 'staging' in spec:
        rig.rmtree(spec['staging'])
    assert reference['calls'] >= 1
    kills = _kill_points(op, reference['names'])
    print(f'{op}: {reference["calls"]} changing calls '
          f'{reference["names"]}; kills after {kills}')
    assert kills
    # Several kills at once: the time is Ceph's latency, not CPU.
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        for done in [pool.submit(_kill_and_check, rig, tmp_path, op, target,
                                 kill_at, reference['new'])
                     for target in ('frontend', 'daemon')
                     for kill_at in kills]:
            done.result()


# The steps every change of a stopped volume shares (take the volume,
# mark the head, commit, prune, unmark, release): killed after each of
# them in revert; in the other changes only after their own steps, the
# same state otherwise being made and checked twice.
SHARED = ('acquire', 'set_meta', 'commit', 'drop_generation', 'release')
OWN_STEPS_ONLY = ('import', 'import-qcow2', 'resize', 'clone')


def _kill_points(op, names):
    """The 1-based call indices to kill after."""
    return [i for i, name in enumerate(names, 1)
            if op not in OWN_STEPS_ONLY or name not in SHARED]
