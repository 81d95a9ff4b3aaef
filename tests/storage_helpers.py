"""Shared set-up for storage tests: a manager with one pool on a real
filesystem, and helpers that act as the VM on running volumes."""

import os
import uuid

from tests.conftest import ROOTS

MiB = 1 << 20

# (id, driver, filesystem, extra options)
POOL_KINDS = [
    ('reflink-xfs', 'file-reflink', 'xfs', []),
    ('reflink-btrfs', 'file-reflink', 'btrfs', []),
    ('file-ext4', 'file', 'ext4', []),
    ('reflink-nocheck-ext4', 'file-reflink', 'ext4', [('setup_check', 'no')]),
]


def make_manager(state_dir, pool_kind, rig, name='p', revisions=1):
    from volsep.frontend import manager as manager_module
    from volsep.privileged import files
    _, driver, fs, extra = pool_kind
    base = f'{ROOTS[fs]}/t-{uuid.uuid4().hex[:12]}'
    files.mkdir(base)
    mgr = manager_module.Manager(str(state_dir))
    mgr.add_pool(name, driver, [('dir_path', f'{base}/{name}'),
                                ('revisions_to_keep', str(revisions))]
                 + extra)
    return mgr, base


def vm_write(rig, path, offset, data):
    rig.pwrite(path, offset, data)


def content(rig, mgr, address):
    """Digest of what the volume's committed (or attached) image holds."""
    return rig.sha256(mgr.volume_info(address)['path'])


def fresh_state_dir(tmp_path):
    path = tmp_path / f'state-{uuid.uuid4().hex[:6]}'
    os.mkdir(path)
    return path


def import_stream(mgr, address, data, fmt='raw', force=True):
    """Import ``data`` as the API feeds a stream: inspected (non-raw),
    written in 1 MiB chunks, ended (unsuccessfully if anything refused
    it). Returns what import_end returns."""
    mgr.import_begin(address, len(data), fmt, force=force)
    try:
        for offset in range(0, len(data), MiB):
            chunk = data[offset:offset + MiB]
            mgr.import_inspect(address, chunk)
            mgr.import_write(address, offset, chunk)
    except BaseException:
        mgr.import_end(address, False)
        raise
    return mgr.import_end(address, True)
