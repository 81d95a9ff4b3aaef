"""Crash safety by fault injection.

For each operation, a reference run counts its privileged calls M; then for
every N in 1..M a fresh volume is prepared, the operation is started, and
right after the N-th privileged call the frontend or a root daemon (the
file daemon; for a qcow2 pool also the long-jobs daemon) is killed with
SIGKILL. A restarted frontend must then find the
volume's committed content exactly old or exactly new, start it, leave no
temporary file after the next operation, and never reuse a revision id;
a chain volume's record must match its images (`chain validate`, and the
layers on disk) after the restart and after the next start and stop.
"""

import json
import os
import sys
import uuid

import pytest

from tests.conftest import ROOTS

PYTHON = sys.executable   # the venv under test (VOLSEP_VENV)
OPERATIONS = ['start', 'stop', 'revert', 'import', 'resize', 'clone',
              'export']
POOLS = {'reflink-xfs': ('file-reflink', 'xfs', []),
         'file-ext4': ('file', 'ext4', []),
         'qcow2-xfs': ('qcow2', 'xfs', [])}
# What a volume's directory may hold afterwards: committed images and
# revisions, or a chain's layers only.
CLEAN = {'file-reflink': ('c', 'r'), 'file': ('c', 'r'), 'qcow2': ('L',)}


def worker_env():
    return {'PATH': '/usr/bin:/bin',
            'PYTHONPATH': os.environ['VOLSEP_TEST_WORK'],
            'PYTHONDONTWRITEBYTECODE': '1',
            'VOLSEP_TEST_USER': os.environ['VOLSEP_TEST_USER'],
            'VOLSEP_TEST_LVM': os.environ.get('VOLSEP_TEST_LVM', ''),
            'VOLSEP_PRIVILEGED_CONFIG':
                os.environ['VOLSEP_PRIVILEGED_CONFIG']}


def _worker(rig, spec):
    rc, out, err = rig.run([PYTHON, '-m', 'tests.crash_worker',
                            json.dumps(spec)], env=worker_env(), timeout=120)
    events = {}
    for line in out.decode().splitlines():
        events.update(json.loads(line))
    return rc, events, err.decode()


def _fresh(tmp_path, rig, pool):
    driver, fs, options = POOLS[pool]
    base = f'{ROOTS[fs]}/t-{uuid.uuid4().hex[:12]}'
    rig.mkdir(base)
    state = tmp_path / uuid.uuid4().hex[:8]
    state.mkdir()
    return base, {'driver': driver, 'pool_dir': f'{base}/p',
                  'options': options, 'state_dir': str(state)}


def _reference(tmp_path, rig, pool, op):
    base, spec = _fresh(tmp_path, rig, pool)
    rc, events, err = _worker(rig, dict(spec, phase='op', op=op))
    rig.rmtree(base)
    assert rc == 0 and 'calls' in events, (events, err)
    return events


# The long-jobs daemon runs a chain's merges and new layers (and every
# convert): killed too where the pool's operations use it most.
CASES = [(op, pool, target) for pool in sorted(POOLS) for op in OPERATIONS
         for target in ['frontend', 'daemon'] + (
             ['jobs'] if POOLS[pool][0] == 'qcow2' else [])]


@pytest.mark.parametrize('op,pool,target', CASES)
def test_kill_after_every_privileged_call(op, pool, target, tmp_path, rig):
    reference = _reference(tmp_path, rig, pool, op)
    assert reference["calls"] >= 1
    print(f"{op}/{pool}: {reference['calls']} privileged calls")
    for kill_at in range(1, reference['calls'] + 1):
        base, spec = _fresh(tmp_path, rig, pool)
        rc, events, err = _worker(rig, dict(spec, phase='op', op=op,
                                            kill_at=kill_at, target=target))
        where = f'{op} killed ({target}) after call {kill_at}: {events} {err}'
        assert events.get('killed_after') == kill_at, where
        if target == 'frontend':
            assert rc == -9, where
        old, ids_before = events['old'], events['ids']
        new = reference['new']

        rc, check, err = _worker(rig, dict(spec, phase='check'))
        where += f' / check: {check} {err}'
        assert rc == 0, where
        assert check['reconciled'] in (old, new), where
        # Recorded as running only with every working copy in place.
        assert not check['running'] or not check['unattached'], where
        if op == 'stop':  # the working copy is never lost
            assert check['cycled'] == new, where
        else:
            assert check['cycled'] == check['reconciled'], where
        clean = CLEAN[POOLS[pool][0]]
        assert all(n[0] in clean for n in check['names_after']), where
        if 'c' in clean:
            assert sum(n.startswith('c') for n in check['names_after']) == 1
        # A chain's record matches its images at every step.
        assert check['chain'] == check['chain_after'] == 'valid', where
        fresh_ids = set(check['ids_after']) - set(ids_before)
        assert fresh_ids and min(fresh_ids) > max(ids_before), where
        assert len(check['revisions']) == len(set(check['revisions']))
        rig.rmtree(base)


@pytest.mark.parametrize('op', ['revert', 'import', 'clone', 'export'])
def test_kill_the_jobs_daemon_while_qemu_img_builds_a_layer(op, tmp_path,
                                                            rig):
    """In the middle of the root call: the new layer (or export) is an
    unnamed file until complete, so nothing of it is left, and the chain
    and its record stay as they were."""
    base, spec = _fresh(tmp_path, rig, 'qcow2-xfs')
    rc, events, err = _worker(rig, dict(spec, phase='op', op=op,
                                        target='jobs-during'))
    where = f'{op}: {events} {err}'
    assert events.get('killed_during', '').startswith('qemu-img'), where
    assert 'failed' in events, where
    rc, check, err = _worker(rig, dict(spec, phase='check'))
    where += f' / check: {check} {err}'
    assert rc == 0, where
    assert check['reconciled'] == events['old'], where
    assert check['ids'] == events['ids'], where
    assert check['chain'] == check['chain_after'] == 'valid', where
    assert all(n[0] == 'L' for n in check['names']), where
    rig.rmtree(base)
