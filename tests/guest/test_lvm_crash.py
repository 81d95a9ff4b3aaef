"""Crash safety of the lvm_thin driver by fault injection, as
tests/test_crash.py does for the file drivers: after the N-th privileged
call of an operation the frontend (the worker process) or the root file
daemon is SIGKILLed; a restarted frontend must find the committed content
exactly old or exactly new, no half-built LV (+t, +e, a stray +w) after
the next start and stop, and revision ids that only grow.

The phases run in children of one tests/crash_server process, which
imports everything once (a process start costs tens of seconds in the
guest). Each kill point still costs a few dozen lvm commands, slow under
the guest's emulated CPU: by default the commit path (stop, killing the
frontend) runs; VOLSEP_LVM_CRASH_ALL=1 runs every operation of
tests/test_crash.py with both targets."""

import json
import os
import sys
import uuid

import pytest

from tests import test_crash
from tests.conftest import ROOTS

ALL = os.environ.get('VOLSEP_LVM_CRASH_ALL') == '1'
DEFAULT = [('stop', 'frontend')]
CASES = [(op, target) for op in test_crash.OPERATIONS
         for target in ('frontend', 'daemon')] if ALL else DEFAULT
CLEANUP = {'phase': 'lvm-cleanup', 'prefixes': ['vs+vm+', 'vs+src+']}


def _serve(rig, specs):
    env = dict(test_crash.worker_env(), VOLSEP_CRASH_PHASE_SECONDS='900')
    rc, out, err = rig.run([sys.executable, '-m', 'tests.crash_server',
                            json.dumps(specs)], env=env, timeout=7200)
    assert rc == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


def _spec(tmp_path):
    from tests.guest import lvm_helpers as lh
    state = tmp_path / uuid.uuid4().hex[:8]
    state.mkdir()
    # A staging_dir: the export case writes qcow2.
    return {'driver': 'lvm_thin', 'state_dir': str(state),
            'options': [['volume_group', lh.VG],
                        ['thin_pool', lh.THIN_POOL],
                        ['staging_dir', f'{ROOTS["plain"]}/staging-'
                                        f'{state.name}']]}


@pytest.mark.parametrize('op,target', CASES)
def test_kill_after_every_privileged_call(op, target, tmp_path, rig):
    _, reference, _ = _serve(rig, [CLEANUP, dict(_spec(tmp_path), phase='op',
                                                 op=op), CLEANUP])
    assert reference['rc'] == 0 and 'calls' in reference['events'], \
        reference
    reference = reference['events']
    print(f'{op}: {reference["calls"]} privileged calls')
    specs = []
    for kill_at in range(1, reference['calls'] + 1):
        spec = _spec(tmp_path)
        specs += [dict(spec, phase='op', op=op, kill_at=kill_at,
                       target=target), dict(spec, phase='check'), CLEANUP]
    results = _serve(rig, specs)
    for kill_at in range(1, reference['calls'] + 1):
        killed, checked, _ = results[3 * kill_at - 3:3 * kill_at]
        events, check = killed['events'], checked['events']
        where = (f'{op} killed ({target}) after call {kill_at}: {killed} / '
                 f'check: {checked}')
        assert events.get('killed_after') == kill_at, where
        if target == 'frontend':
            assert killed['rc'] == -9, where
        assert checked['rc'] == 0, where
        assert check['reconciled'] in (events['old'], reference['new']), \
            where
        assert not check['running'] or not check['unattached'], where
        if op == 'stop':  # the working copy is never lost
            assert check['cycled'] == reference['new'], where
        else:
            assert check['cycled'] == check['reconciled'], where
        # Only committed generations remain, within revisions_to_keep (2).
        assert all(n.startswith('c') for n in check['names_after']), where
        assert len(check['names_after']) <= 3, where
        fresh_ids = set(check['ids_after']) - set(events['ids'])
        assert fresh_ids and min(fresh_ids) > max(events['ids']), where
        assert len(check['revisions']) == len(set(check['revisions'])), \
            where
