"""One phase of a crash test, in its own process, as volsepd runs: started
as root, forks the privileged daemons, drops to the test user.

    python -m tests.crash_worker '{"phase": ..., ...}'

Phases:
  op     prepare a volume, then run one operation; with kill_at=N, kill the
         frontend (this process), the file daemon or the long-jobs daemon
         right after the N-th privileged call; with target=jobs-during,
         kill the long-jobs daemon while its qemu-img child runs. Prints
         JSON lines as it goes.
  check  restart: load the state, reconcile, report; then stop/start/stop
         the domain and report again.
"""

import faulthandler
import json
import os
import signal
import sys
import threading
import time

from oslo_privsep import daemon as privsep_daemon

from tests import procs
from tests import rig
from volsep.privileged import contexts
from volsep.privileged import files

MiB = 1 << 20
SIZE = 4 * MiB


def emit(**fields):
    print(json.dumps(fields), flush=True)


def _committed(mgr, address='vm:root'):
    return mgr.volume_info(address)['path']


def _is_chain(mgr, address='vm:root'):
    return mgr._pool(mgr._config(address).pool).capabilities.chains


def _is_lvm(mgr, address='vm:root'):
    return mgr._pool(mgr._config(address).pool).driver == 'lvm_thin'


def _digest(mgr, address='vm:root'):
    """Of the committed content: the image, or the chain as a guest reads
    it (converted to raw by qemu-img)."""
    if _is_lvm(mgr, address):
        from tests.guest import lvm_helpers
        return lvm_helpers.digest(rig, _committed(mgr, address))
    if not _is_chain(mgr, address):
        return rig.sha256(_committed(mgr, address))
    top, fmt = mgr._volume(mgr._config(address)).recorded()[0]
    view = f'{os.path.dirname(mgr._pool("p").dir_path)}/view.raw'
    rc, _, err = rig.run(['qemu-img', 'convert', '-U', '-f', fmt, '-O',
                          'raw', top, view])
    if rc != 0:
        return f'unreadable: {err.decode()}'
    try:
        return rig.sha256(view)
    finally:
        rig.run(['rm', '-f', view])


def _ids(mgr, address='vm:root'):
    volume = mgr._volume(mgr._config(address))
    listing = volume.listing()
    if _is_chain(mgr, address):
        return sorted(listing.layers)
    if _is_lvm(mgr, address):
        return sorted(listing.generations)
    return sorted([g for g, _ in listing.committed] +
                  [r.id for r in listing.revisions])


def _chain_check(mgr, address='vm:root'):
    """'valid' when the record matches the headers and names exactly the
    layers on disk, else what is wrong."""
    if not _is_chain(mgr, address):
        return 'valid'
    try:
        mgr.chain_validate(address)
    except Exception as err:  # noqa: BLE001 - reported to the test
        return f'{type(err).__name__}: {err}'
    from volsep.drivers import qcow2
    recorded = sorted(qcow2.generation(path) for path, _ in
                      mgr._volume(mgr._config(address)).recorded())
    if recorded != _ids(mgr, address):
        return f'record {recorded} but layers {_ids(mgr, address)} on disk'
    return 'valid'


def _names(mgr, address='vm:root'):
    """The volume's files, or for lvm_thin the suffixes of its LVs."""
    volume = mgr._volume(mgr._config(address))
    if _is_lvm(mgr, address):
        listing = volume.listing()
        others = {'w': listing.working, 't': listing.building,
                  'e': listing.export}
        return sorted([f'c{g}' for g in listing.generations] +
                      [suffix for suffix, lv in others.items() if lv])
    return sorted(e['name'] for e in files.list_dir(volume.directory))


def _guest_write(path, fmt, data):
    if fmt == 'raw':
        rig.pwrite(path, 0, data)
        return
    rc, _, err = rig.run(['qemu-io', '-f', fmt, '-c',
                          f'write -P {data[0]} 0 {len(data)}', path])
    assert rc == 0, err


def _commit(mgr, domain, data):
    started = mgr.start_domain(domain)[0]
    _guest_write(started['path'], started['format'], data)
    mgr.stop_domain(domain)


def prepare(mgr, spec):
    """Build the pre-state; return the operation to run."""
    location = [('dir_path', spec['pool_dir'])] if 'pool_dir' in spec \
        else []
    mgr.add_pool('p', spec['driver'], location +
                 [tuple(o) for o in spec.get('options', [])])
    mgr.create_volume('vm:root', 'p', SIZE, revisions_to_keep=2)
    _commit(mgr, 'vm', b'A' * 65536)
    op = spec['op']
    if op == 'start':
        return lambda: mgr.start_domain('vm')
    if op == 'stop':
        # A volatile volume beside it: a stop cut short must never leave
        # the domain running with that working copy gone.
        mgr.create_volume('vm:tmp', 'p', SIZE, kind='volatile')
        started = mgr.start_domain('vm')[0]
        _guest_write(started['path'], started['format'], b'B' * 65536)
        return lambda: mgr.stop_domain('vm')
    if op == 'revert':
        _commit(mgr, 'vm', b'C' * 65536)
        return lambda: mgr.revert('vm:root')
    if op == 'import':
        target = mgr.import_begin('vm:root', 2 * MiB, force=True)
        rig.pwrite(target, 0, b'D' * 65536)
        return lambda: mgr.import_end('vm:root', True)
    if op == 'resize':
        return lambda: mgr.resize('vm:root', 8 * MiB)
    if op == 'export':
        return lambda: mgr.export_begin('vm:root', 'qcow2')
    if op == 'clone':
        mgr.create_volume('src:root', 'p', SIZE)
        _commit(mgr, 'src', b'E' * 65536)
        return lambda: mgr.clone('src:root', 'vm:root')
    raise ValueError(op)


def _wait_until_channel_down(ctx):
    deadline = time.monotonic() + 10
    while ctx.channel is not None and ctx.channel.running:
        if time.monotonic() > deadline:
            raise RuntimeError('privsep channel still up after daemon kill')
        time.sleep(0.01)


def arm(kill_at, target, daemons, counts=lambda name: True):
    """Count volsep's privileged calls (those ``counts`` names); right
    after the kill_at-th one returns, SIGKILL this frontend, the file
    daemon ('daemon') or the long-jobs daemon ('jobs')."""
    original = privsep_daemon._ClientChannel.remote_call
    state = {'calls': 0, 'names': []}

    def counted(self, name, args, kwargs, timeout):
        if not name.startswith('volsep.') or not counts(name):
            return original(self, name, args, kwargs, timeout)
        try:
            return original(self, name, args, kwargs, timeout)
        finally:
            state['calls'] += 1
            state['names'].append(name)
            if state['calls'] == kill_at:
                emit(killed_after=kill_at, target=target, call=name)
                if target == 'frontend':
                    os.kill(os.getpid(), signal.SIGKILL)
                pid, context = daemons[target]
                rig.kill(pid)
                _wait_until_channel_down(context)
    privsep_daemon._ClientChannel.remote_call = counted
    return state


# The qemu-img command that moves an operation's data.
DATA_COMMANDS = {'revert': 'rebase', 'import': 'convert', 'clone': 'convert',
                 'export': 'convert'}


def kill_during_qemu_img(daemons, op):
    """In the background: SIGKILL the long-jobs daemon while its qemu-img
    child moves the operation's data, in the middle of a privileged
    call."""
    pid, _ = daemons['jobs']
    command = DATA_COMMANDS[op]

    def watch():
        if rig.kill_while_child_runs(pid, ['/usr/bin/qemu-img', command],
                                     60):
            emit(killed_during=f'qemu-img {command}')
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def phase_op(mgr, spec, daemons):
    action = prepare(mgr, spec)
    emit(old=_digest(mgr), ids=_ids(mgr))
    if spec.get('target') == 'jobs-during':
        watcher = kill_during_qemu_img(daemons, spec['op'])
        try:
            action()
        except Exception as err:  # noqa: BLE001 - reported to the test
            emit(failed=f'{type(err).__name__}: {err}')
        watcher.join(timeout=1)
        return
    state = arm(spec.get('kill_at', 0), spec.get('target'), daemons)
    try:
        action()
    except Exception as err:  # noqa: BLE001 - reported to the test
        emit(failed=f'{type(err).__name__}: {err}')
        return
    emit(calls=state['calls'], new=_digest(mgr), ids_after=_ids(mgr))


def phase_check(mgr, spec, daemons):
    mgr.reconcile()
    emit(reconciled=_digest(mgr), names=_names(mgr), ids=_ids(mgr),
         chain=_chain_check(mgr),
         running=mgr.domains['vm'].running,
         unattached=[c.address for c in mgr.domains['vm'].volumes.values()
                     if mgr.volume_info(c.address)['path'] is None])
    if mgr.domains['vm'].running:
        mgr.stop_domain('vm')
    mgr.start_domain('vm')
    mgr.stop_domain('vm')
    emit(cycled=_digest(mgr), names_after=_names(mgr),
         chain_after=_chain_check(mgr),
         ids_after=_ids(mgr), revisions=[r['id'] for r in
                                         mgr.revisions('vm:root')])


def main():
    run(json.loads(sys.argv[1]))


def run(spec):
    """One phase, from a process that is still root."""
    # A phase that hangs prints every thread's stack, for the test to show,
    # before the test's own timeout kills it silently.
    faulthandler.dump_traceback_later(
        int(os.environ.get('VOLSEP_CRASH_PHASE_SECONDS', '100')), exit=True)
    from volsep.frontend import manager as manager_module
    from volsep.frontend import privsep_start
    privsep_start.start_daemons()
    file_daemon, jobs_daemon = procs.children()[:2]   # as contexts.ALL
    daemons = {'daemon': (file_daemon, contexts.file_ops),
               'jobs': (jobs_daemon, contexts.long_jobs)}
    rig.ctx.start(rig.priv_context.Method.FORK)
    privsep_start.drop_privileges(os.environ['VOLSEP_TEST_USER'])
    mgr = manager_module.Manager(spec['state_dir'])
    {'op': phase_op, 'check': phase_check}[spec['phase']](
        mgr, spec, daemons)


if __name__ == '__main__':
    main()
