"""Crash safety of the lvm_thin driver by fault injection, as
tests/test_crash.py does for the file drivers: after the N-th privileged
call of an operation the frontend (this worker process) or the root file
daemon is SIGKILLed; a restarted frontend must find the committed content
exactly old or exactly new, no half-built LV (+t, +e) after the next
start and stop, and revision ids that only grow.

Every call of every operation costs two worker processes and a dozen lvm
commands, which under the guest's emulated CPU take long: by default the
commit paths (stop and import, with both kill targets, and start) run;
VOLSEP_LVM_CRASH_ALL=1 runs every operation with both targets."""

import os
import uuid

import pytest

from tests import test_crash
from tests.guest import lvm_helpers as lh

ALL = os.environ.get('VOLSEP_LVM_CRASH_ALL') == '1'
DEFAULT = [('stop', 'frontend'), ('stop', 'daemon'), ('import', 'frontend'),
           ('start', 'frontend')]
CASES = [(op, target) for op in test_crash.OPERATIONS
         for target in ('frontend', 'daemon')] if ALL else DEFAULT


def _spec(tmp_path):
    state = tmp_path / uuid.uuid4().hex[:8]
    state.mkdir()
    return {'driver': 'lvm_thin', 'state_dir': str(state),
            'options': [['volume_group', lh.VG],
                        ['thin_pool', lh.THIN_POOL]]}


def _remove_all(rig, spec):
    """Drop every LV the run left (each run uses the same names)."""
    for name in lh.lvs(rig):
        if name.startswith(('vs+vm+', 'vs+src+')):
            lh.lvm(rig, 'lvremove', '-f', f'{lh.VG}/{name}')


@pytest.mark.parametrize('op,target', CASES)
def test_kill_after_every_privileged_call(op, target, tmp_path, rig):
    spec = _spec(tmp_path)
    _remove_all(rig, spec)
    rc, reference, err = test_crash._worker(rig, dict(spec, phase='op',
                                                      op=op))
    _remove_all(rig, spec)
    assert rc == 0 and 'calls' in reference, (reference, err)
    print(f'{op}: {reference["calls"]} privileged calls')
    for kill_at in range(1, reference['calls'] + 1):
        spec = _spec(tmp_path)
        rc, events, err = test_crash._worker(
            rig, dict(spec, phase='op', op=op, kill_at=kill_at,
                      target=target))
        where = f'{op} killed ({target}) after call {kill_at}: {events} {err}'
        assert events.get('killed_after') == kill_at, where
        if target == 'frontend':
            assert rc == -9, where
        old, ids_before = events['old'], events['ids']
        rc, check, err = test_crash._worker(rig, dict(spec, phase='check'))
        where += f' / check: {check} {err}'
        assert rc == 0, where
        assert check['reconciled'] in (old, reference['new']), where
        assert not check['running'] or not check['unattached'], where
        if op == 'stop':  # the working copy is never lost
            assert check['cycled'] == reference['new'], where
        else:
            assert check['cycled'] == check['reconciled'], where
        # Only committed generations remain, within revisions_to_keep (2).
        assert all(n.startswith('c') for n in check['names_after']), where
        assert len(check['names_after']) <= 3, where
        fresh_ids = set(check['ids_after']) - set(ids_before)
        assert fresh_ids and min(fresh_ids) > max(ids_before), where
        assert len(check['revisions']) == len(set(check['revisions']))
        _remove_all(rig, spec)
