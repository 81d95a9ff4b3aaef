"""The root side's hash-chained audit log."""

import json
import os
import subprocess
import sys

import pytest

from volsep.privileged import audit
from volsep.privileged import errors
from volsep.privileged import files

VOLSEP = os.path.join(os.path.dirname(sys.executable), 'volsep')


def _log_path():
    with open(os.environ['VOLSEP_PRIVILEGED_CONFIG']) as f:
        line = next(line for line in f if line.startswith('audit_log'))
    return line.split('=', 1)[1].strip()


def _lines(rig):
    return rig.read(_log_path()).decode().splitlines()


def test_every_call_is_recorded_with_caller_and_outcome(xfs_dir, rig):
    files.create(f'{xfs_dir}/a', 4096)
    with pytest.raises(errors.AlreadyExists):
        files.create(f'{xfs_dir}/a', 4096)
    records = [json.loads(line) for line in _lines(rig)[-2:]]
    assert [r['entrypoint'] for r in records] == [
        'volsep.privileged.files.create'] * 2
    assert records[0]['outcome'] == 'ok'
    assert records[1]['outcome'].startswith('AlreadyExists')
    for record in records:
        assert record['args'] == [f'{xfs_dir}/a', 4096]
        assert record['caller']['uid'] == os.getuid()
        assert record['time'].endswith('Z')
        assert record['duration_ms'] >= 0


def test_unprivileged_side_cannot_touch_the_log():
    with pytest.raises(PermissionError):
        open(_log_path(), 'a')
    with pytest.raises(PermissionError):
        open(_log_path(), 'r')


def test_chain_verifies_and_breaks_on_tampering(xfs_dir, rig):
    for i in range(5):
        files.create(f'{xfs_dir}/f{i}', 4096)
    lines = _lines(rig)
    assert audit.verify_lines(lines) == (True, len(lines), '')

    edited = list(lines)
    record = json.loads(edited[-3])
    record['outcome'] = 'ok, nothing to see'
    edited[-3] = json.dumps(record, sort_keys=True, separators=(',', ':'))
    deleted = lines[:-3] + lines[-2:]
    swapped = lines[:-3] + [lines[-2], lines[-3], lines[-1]]
    for tampered in (edited, deleted, swapped):
        ok, good, why = audit.verify_lines(tampered)
        assert not ok and why
        assert good < len(lines)


def test_cli_verify(xfs_dir, rig, tmp_path):
    files.create(f'{xfs_dir}/a', 4096)
    lines = _lines(rig)
    good = tmp_path / 'good.log'
    good.write_text('\n'.join(lines) + '\n')
    proc = subprocess.run([VOLSEP, 'audit', 'verify', '--audit-log', str(good),
                           '-f', 'json'], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)['ok'] is True

    bad = tmp_path / 'bad.log'
    bad.write_text('\n'.join(lines[:1] + lines[2:]) + '\n')
    proc = subprocess.run([VOLSEP, 'audit', 'verify', '--audit-log', str(bad),
                           '-f', 'json'], capture_output=True, text=True)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)['ok'] is False
    assert 'line 2' in proc.stderr


def test_a_record_cut_short_is_marked_and_the_chain_goes_on(xfs_dir, rig):
    """Found by review: a root daemon SIGKILLed inside write() can leave
    half a record (the kernel stops a write between pages for a fatal
    signal; a host crash can too). The next append found the last line
    unusable and refused every root call from then on, for good. Now it
    ends the torn line, names it by length and digest in the next record,
    and verify accepts exactly that and nothing else. (A root process of
    its own, with its own log: the suite's log stays whole.)"""
    conf_dir = f'{os.environ["VOLSEP_TEST_WORK"]}/torn-{os.getpid()}'
    log = f'{conf_dir}/audit.log'
    rig.mkdir(conf_dir)
    with open(os.environ['VOLSEP_PRIVILEGED_CONFIG']) as f:
        roots = next(line for line in f if line.startswith('allowed_roots'))
    rig.write(f'{conf_dir}/privileged.conf',
              f'[privileged]\n{roots}audit_log = {log}\n'.encode(), 0o644)
    code = (
        'import sys\n'
        'from volsep.privileged import contexts, files\n'
        'contexts.file_ops.set_client_mode(False)\n'
        'files.create(sys.argv[1] + "/before", 4096)\n'
        'line = open(sys.argv[2]).read().splitlines()[-1]\n'
        'open(sys.argv[2], "a").write(line[:150])   # a write cut short\n'
        'files.create(sys.argv[1] + "/after", 4096)\n')
    rc, _, err = rig.run([sys.executable, '-c', code, xfs_dir, log], env={
        'VOLSEP_PRIVILEGED_CONFIG': f'{conf_dir}/privileged.conf',
        'PATH': '/usr/bin:/bin'})
    lines = rig.read(log).decode().splitlines()
    rig.rmtree(conf_dir)
    assert rc == 0, err                        # refused before the fix
    fragment = lines[-2]
    assert len(fragment) == 150
    assert json.loads(lines[-1])['torn'] == audit.torn_marker(fragment)
    assert audit.verify_lines(lines) == (True, len(lines), '')
    edited = lines[:-2] + [fragment.replace('"', "'", 1), lines[-1]]
    removed = lines[:-2] + lines[-1:]
    for tampered in (edited, removed):
        ok, _, why = audit.verify_lines(tampered)
        assert not ok and why
