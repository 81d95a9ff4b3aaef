"""One phase of an rbd crash test, in its own process, as volsepd runs
(see crash_worker.py, whose start-up and kill switch this shares): the
volumes live in the test cluster's Ceph pool, under domain names of the
test's own, so runs never meet.

    python -m tests.rbd_crash_worker '{"phase": ..., ...}'

The spec names the domains (dom, src), this host's id (every worker
its own: a service adopts its own host's locks), the state directory and
the Ceph pool and monitors. Phases:
  op     prepare the volumes, then run one operation; with kill_at=N, kill
         the frontend (this process) or the file daemon (the one that talks
         to Ceph) right after the N-th privileged rbd call that may change
         something. Prints JSON lines as it goes.
  check  restart: reconcile and report; stop if running, start, stop and
         report again; then remove the volumes and report what is left.
"""

import faulthandler
import hashlib
import json
import os
import subprocess
import sys

from tests import crash_worker
from tests import procs
from tests import rig
from volsep.privileged import contexts
from volsep.privileged import files
from volsep.privileged import qemu
from volsep.privileged import rbd

MiB = 1 << 20
SIZE = 4 * MiB
# The rbd and file entrypoints that only read: a kill after one of them
# repeats the kill after the call before it. Of qemu-img's, convert is the
# one that writes.
READ_ONLY = ('scan', 'read_at', 'usage', 'list_tree', 'list_dir',
             'stat_path')
emit = crash_worker.emit


def _changes(name):
    module, _, leaf = name.rpartition('.')
    if module == qemu.__name__:
        return leaf == 'convert'
    return module in (rbd.__name__, files.__name__) and \
        leaf not in READ_ONLY


def _rbd_cli(spec, *args):
    rc, out, err = rig.run(['/usr/bin/rbd', '-c', spec['conf'], '--id',
                            'admin'] + list(args),
                           env={'PATH': '/usr/bin:/bin'})
    if rc != 0:
        raise RuntimeError(f'rbd {args}: {err.decode()}')
    return out


def _image_digest(spec, image):
    """sha256 of an image (or IMAGE@SNAP) as the cluster's admin reads
    it, not through volsep."""
    data = _rbd_cli(spec, 'export', '--no-progress',
                    f'{spec["pool"]}/{image}', '-')
    return hashlib.sha256(data).hexdigest()


def _listing(mgr, address):
    return mgr._volume(mgr._config(address)).listing()


def _committed(mgr, spec, address):
    """sha256 of the current generation, and of the head a VM attaches."""
    domain, name = address.split(':')
    data = _listing(mgr, address)['data']
    image = rbd.data_name(domain, name)
    return (_image_digest(spec, f'{image}@c{data["snaps"][-1][0]}'),
            _image_digest(spec, image))


def _ids(mgr, address):
    return [s[0] for s in _listing(mgr, address)['data']['snaps']]


def _owner(mgr, address):
    owner = _listing(mgr, address)['owner']
    return owner and owner[0]


def _names(spec):
    """Every image and snapshot of the test's domains in the pool."""
    found = []
    for image in json.loads(_rbd_cli(spec, 'ls', '--format', 'json',
                                     spec['pool'])):
        if image.split('+')[0] not in (spec['dom'], spec['src']):
            continue
        found.append(image)
        try:
            snaps = json.loads(_rbd_cli(spec, 'snap', 'ls', '--format',
                                        'json', f'{spec["pool"]}/{image}'))
        except RuntimeError:   # listed, but its removal was cut short
            found[-1] += ' (half removed)'
            continue
        found += [f'{image}@{snap["name"]}' for snap in snaps]
    return sorted(found)


def _staging(spec):
    """What the pool's staging directory holds, if it has one."""
    return sorted(rig.tree(spec['staging'])) if 'staging' in spec else []


def _guest_write(spec, domain, data):
    rbd.write_at(spec['pool'], domain, 'root', 0, data)


def _commit(mgr, spec, domain, data):
    mgr.start_domain(domain)
    _guest_write(spec, domain, data)
    mgr.stop_domain(domain)


def _qcow2(spec, data):
    """A qcow2 image holding ``data`` at offset 0, made as the test user
    (this process, after the drop)."""
    path = f'{spec["state_dir"]}/upload.qcow2'
    for argv in (['qemu-img', 'create', '-q', '-f', 'qcow2', path, '2M'],
                 ['qemu-io', '-f', 'qcow2', '-c',
                  f'write -P {data[0]} 0 {len(data)}', path]):
        subprocess.run(argv, check=True, capture_output=True)
    return path


def _stream(mgr, address, path, fmt):
    """An upload, as volsepd streams one: inspected, then written."""
    with open(path, 'rb') as f:
        content = f.read()
    mgr.import_begin(address, len(content), fmt, force=True)
    mgr.import_inspect(address, content)
    mgr.import_write(address, 0, content)


def prepare(mgr, spec):
    """Build the pre-state; return the operation to run."""
    dom, src = spec['dom'], spec['src']
    mgr.add_pool('ceph', 'rbd', [('ceph_pool', spec['pool']),
                                 ('host_id', spec['host']),
                                 ('monitors', spec['monitors'])] + (
        [('staging_dir', spec['staging'])] if 'staging' in spec else []))
    mgr.create_volume(f'{dom}:root', 'ceph', SIZE, revisions_to_keep=2)
    _commit(mgr, spec, dom, b'A' * 65536)
    op = spec['op']
    if op == 'start':
        return lambda: mgr.start_domain(dom)
    if op == 'stop':
        # A volatile volume beside it: a stop cut short must never leave
        # the domain running with that working copy gone.
        mgr.create_volume(f'{dom}:tmp', 'ceph', SIZE, kind='volatile')
        mgr.start_domain(dom)
        _guest_write(spec, dom, b'B' * 65536)
        return lambda: mgr.stop_domain(dom)
    if op == 'revert':
        _commit(mgr, spec, dom, b'C' * 65536)
        return lambda: mgr.revert(f'{dom}:root')
    if op == 'import':
        mgr.import_begin(f'{dom}:root', 2 * MiB, force=True)
        mgr.import_write(f'{dom}:root', 0, b'D' * 65536)
        return lambda: mgr.import_end(f'{dom}:root', True)
    if op == 'import-qcow2':
        image = _qcow2(spec, b'Q' * 65536)
        _stream(mgr, f'{dom}:root', image, 'qcow2')
        return lambda: mgr.import_end(f'{dom}:root', True)
    if op == 'resize':
        return lambda: mgr.resize(f'{dom}:root', 8 * MiB)
    if op == 'clear':
        return lambda: mgr.clear(f'{dom}:root')
    if op == 'clone':
        mgr.create_volume(f'{src}:root', 'ceph', SIZE)
        _commit(mgr, spec, src, b'E' * 65536)
        return lambda: mgr.clone(f'{src}:root', f'{dom}:root')
    raise ValueError(op)


def phase_op(mgr, spec, daemons):
    action = prepare(mgr, spec)
    address = f'{spec["dom"]}:root'
    emit(old=_committed(mgr, spec, address)[0], ids=_ids(mgr, address))
    state = crash_worker.arm(spec.get('kill_at', 0), spec.get('target'),
                             daemons, counts=_changes)
    try:
        action()
    except Exception as err:  # noqa: BLE001 - reported to the test
        emit(failed=f'{type(err).__name__}: {err}')
        return
    emit(calls=state['calls'], new=_committed(mgr, spec, address)[0],
         names=[n.rpartition('.')[2] for n in state['names']])
    if not spec.get('kill_at'):
        _remove_all(mgr, spec)   # a reference run: nothing to check


def _remove_all(mgr, spec):
    if mgr.domains[spec['dom']].running:
        mgr.stop_domain(spec['dom'])
    for domain in (spec['dom'], spec['src']):
        volumes = mgr.domains[domain].volumes if domain in mgr.domains \
            else {}
        for name in sorted(volumes):
            mgr.remove_volume(f'{domain}:{name}')


def phase_check(mgr, spec, daemons):
    dom = spec['dom']
    address = f'{dom}:root'
    mgr.reconcile()
    running = mgr.domains[dom].running
    committed, head = _committed(mgr, spec, address)
    emit(reconciled=committed, head=head, names=_names(spec),
         staging=_staging(spec),
         ids=_ids(mgr, address), running=running,
         owner=_owner(mgr, address),
         unattached=[c.address for c in mgr.domains[dom].volumes.values()
                     if mgr.volume_info(c.address)['path'] is None])
    if running:
        mgr.stop_domain(dom)
    mgr.start_domain(dom)
    mgr.stop_domain(dom)
    emit(cycled=_committed(mgr, spec, address)[0],
         names_after=_names(spec), ids_after=_ids(mgr, address),
         owner_after=_owner(mgr, address),
         revisions=[r['id'] for r in mgr.revisions(address)])
    _remove_all(mgr, spec)
    emit(left=_names(spec))


def main():
    faulthandler.dump_traceback_later(100, exit=True)
    spec = json.loads(sys.argv[1])
    from volsep.frontend import manager as manager_module
    from volsep.frontend import privsep_start
    privsep_start.start_daemons()
    file_daemon = procs.children()[0]   # as contexts.ALL
    daemons = {'daemon': (file_daemon, contexts.file_ops)}
    rig.ctx.start(rig.priv_context.Method.FORK)
    privsep_start.drop_privileges(os.environ['VOLSEP_TEST_USER'])
    mgr = manager_module.Manager(spec['state_dir'])
    {'op': phase_op, 'check': phase_check}[spec['phase']](
        mgr, spec, daemons)


if __name__ == '__main__':
    main()
