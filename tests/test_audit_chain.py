"""One audit chain for both root daemons, streams in a few records, and
`volsep audit verify` of the running service with no flags."""

import json
import os
import subprocess
import threading

from tests import service_helpers as sh
from tests.test_service import service  # noqa: F401  (the fixture)
from volsep.privileged import audit
from volsep.privileged import files
from volsep.privileged import qemu

MiB = 1 << 20


def _log_path():
    with open(os.environ['VOLSEP_PRIVILEGED_CONFIG']) as f:
        line = next(line for line in f if line.startswith('audit_log'))
    return line.split('=', 1)[1].strip()


def test_both_daemons_write_one_chain(xfs_dir, rig):
    """Quick calls on the file daemon from many threads while the jobs
    daemon converts: the log verifies clean afterwards (each daemon kept
    its own sequence before, and the chain broke at once)."""
    qemu.create(f'{xfs_dir}/src.qcow2', 'qcow2', MiB)
    errors_seen = []

    def quick():
        try:
            for _ in range(40):
                files.stat_path(f'{xfs_dir}/src.qcow2')
        except Exception as err:   # noqa: B902 - reported below
            errors_seen.append(err)

    threads = [threading.Thread(target=quick) for _ in range(6)]
    for t in threads:
        t.start()
    for n in range(6):
        qemu.convert(f'{xfs_dir}/src.qcow2', 'qcow2', f'{xfs_dir}/o{n}',
                     'raw')
    for t in threads:
        t.join()
    assert not errors_seen
    lines = rig.read(_log_path()).decode().splitlines()
    assert audit.verify_lines(lines) == (True, len(lines), '')
    entrypoints = {json.loads(line)['entrypoint'] for line in lines[-300:]}
    assert {'volsep.privileged.qemu.convert',
            'volsep.privileged.files.stat_path'} <= entrypoints


def test_a_stream_is_a_few_records(xfs_dir, rig):
    """64 chunks written then read back: a start record and a summary per
    direction, not one per chunk; the chain stays valid."""
    path = f'{xfs_dir}/stream'
    files.create(path, 64 * MiB)
    before = len(rig.read(_log_path()).decode().splitlines())
    for n in range(64):
        files.write_at(path, n * MiB, b'x' * MiB)
    for n in range(64):
        files.read_at(path, n * MiB, MiB)
    files.unlink(path)       # the next call about the file ends both
    lines = rig.read(_log_path()).decode().splitlines()
    new = [json.loads(line) for line in lines[before:]
           if path in line]
    assert len(new) <= 6, new
    summaries = [r['stream'] for r in new if isinstance(r.get('stream'),
                                                         dict)]
    assert sorted(s['chunks'] for s in summaries) == [63, 63]
    assert all(s['bytes'] == 63 * MiB for s in summaries)
    assert audit.verify_lines(lines) == (True, len(lines), '')


def test_verify_without_flags_checks_the_running_service(service, tmp_path):
    """The README tour's qcow2 import, then `volsep audit verify` with no
    flags: the service's own log, checked by its root side, clean."""
    image = tmp_path / 'vm.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(image),
                    '8M'], check=True)
    service.json('volume', 'create', 'work:root', '--pool', 'default',
                 '--size', '1M')
    service.json('volume', 'import', 'work:root', str(image), '--format',
                 'qcow2')
    result = service.json('audit', 'verify')
    assert result['ok'] is True and result['lines'] > 5, result
    assert result['verified'] == result['lines']


def test_a_record_torn_by_a_kill_is_ended_and_named(tmp_path):
    """A daemon SIGKILLed mid-append (or a power loss) leaves a partial
    last line; it used to end the chain for every later call, so volsepd
    could never start again. A restarted daemon's next append ends the
    torn line, names it by length and digest, and the chain verifies."""
    path = str(tmp_path / 'audit.log')
    log = audit.AuditLog(path)
    log.ensure_open()
    log.append({'entrypoint': 'first'})
    fragment = '{"entrypoint":"volsep.privileged.files.rena'
    with open(path, 'a') as f:
        f.write(fragment)
    fresh = audit.AuditLog(path)   # as a restarted daemon
    fresh.ensure_open()
    fresh.append({'entrypoint': 'after'})
    lines = audit.read_lines(path)
    assert audit.verify_lines(lines) == (True, 3, '')
    assert lines[1] == fragment
    after = json.loads(lines[2])
    assert after['entrypoint'] == 'after'
    assert after['torn'] == audit.torn_marker(fragment)
