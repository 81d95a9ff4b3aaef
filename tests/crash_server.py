"""Many crash_worker phases from one process that imports everything
once: each phase runs in a child forked from it, as crash_worker would run
it (still root; the child starts its own root daemons and drops), so a
phase costs no interpreter start and no imports. In the TCG guest those
take tens of seconds per process; the lvm_thin crash tests need hundreds
of phases.

    python -m tests.crash_server '[SPEC, ...]'

A SPEC is a crash_worker spec, or {"phase": "lvm-cleanup", "prefixes":
[...]}, which removes (as root, in this process) every LV of the test VG
whose name starts with one of the prefixes. Prints one JSON line per
SPEC: {"rc": exit status or -signal, "events": {...}, "stderr": "..."}.
The parent starts no thread, so forking it is safe.
"""

import importlib
import json
import os
import selectors
import subprocess
import sys
import traceback

from tests import crash_worker

# What every phase needs, imported once here rather than in each child.
for _module in ('volsep.frontend.manager', 'volsep.frontend.privsep_start',
                'tests.guest.lvm_helpers'):
    importlib.import_module(_module)


def _child(spec, out_w, err_w):
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    code = 0
    try:
        crash_worker.run(spec)
    except BaseException:  # noqa: BLE001 - reported to the test
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _read_all(out_r, err_r):
    chunks = {out_r: [], err_r: []}
    selector = selectors.DefaultSelector()
    for fd in chunks:
        selector.register(fd, selectors.EVENT_READ)
    open_fds = set(chunks)
    while open_fds:
        for key, _ in selector.select():
            data = os.read(key.fd, 65536)
            if data:
                chunks[key.fd].append(data)
            else:
                selector.unregister(key.fd)
                open_fds.discard(key.fd)
    return b''.join(chunks[out_r]), b''.join(chunks[err_r])


def run_phase(spec):
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        _child(spec, out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    # The child's root daemons inherit the pipes too: read until all of
    # them are gone, not only the child.
    out, err = _read_all(out_r, err_r)
    os.close(out_r)
    os.close(err_r)
    _, status = os.waitpid(pid, 0)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) \
        else os.WEXITSTATUS(status)
    events = {}
    for line in out.decode().splitlines():
        events.update(json.loads(line))
    return {'rc': rc, 'events': events, 'stderr': err.decode()[-4000:]}


def lvm_cleanup(spec):
    from tests.guest import lvm_helpers
    env = {'LC_ALL': 'C', 'DM_DISABLE_UDEV': '1',
           'PATH': '/usr/sbin:/usr/bin:/sbin:/bin'}
    config = lvm_helpers.lvm_config()
    listed = subprocess.run(
        ['/sbin/lvm', 'lvs', '--config', config, '--noheadings', '-o',
         'lv_name', lvm_helpers.VG], env=env, capture_output=True,
        check=True).stdout.decode().split()
    # All in one lvremove: each lvm command costs about a second in the
    # guest.
    doomed = [f'{lvm_helpers.VG}/{name}' for name in listed
              if name.startswith(tuple(spec['prefixes']))]
    if doomed:
        subprocess.run(['/sbin/lvm', 'lvremove', '--config', config, '-f',
                        *doomed], env=env, capture_output=True, check=True)
    return {'rc': 0, 'events': {}, 'stderr': ''}


def main():
    for spec in json.loads(sys.argv[1]):
        if spec.get('phase') == 'lvm-cleanup':
            result = lvm_cleanup(spec)
        else:
            result = run_phase(spec)
        print(json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
