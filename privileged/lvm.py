"""LVM thin entrypoints: each does one thing to one of volsep's thin LVs in
a thin pool that the root configuration allows (`allowed_thin_pools`).

The frontend names LVs by address, VG/POOL/DOMAIN/VOLUME/SUFFIX; the LV
name is built here (lvm_names), so no other LV is reachable by name, and
before any change the LV is looked up in the report of that thin pool:
an LV of that name elsewhere (another pool, not thin) is refused. lvm runs
by absolute path with argument lists only (lvm_tool); reads and writes of
an LV's data go through a descriptor checked to be that LV's device
(lvm_device).
"""

import contextlib
import errno
import os

from volsep.privileged import audit
from volsep.privileged import config
from volsep.privileged import contexts
from volsep.privileged import copying
from volsep.privileged import errors
from volsep.privileged import holes
from volsep.privileged import inuse
from volsep.privileged import lvm_device
from volsep.privileged import lvm_names
from volsep.privileged import lvm_tool
from volsep.privileged import paths
from volsep.privileged import validate

_LV_FIELDS = ('lv_name', 'lv_size', 'lv_time', 'origin', 'lv_active',
              'pool_lv', 'segtype', 'data_percent', 'metadata_percent',
              'lv_metadata_size')
# LVM's thin volumes round sizes up to whole extents; one extent is at
# least a sector, so smaller sizes are a caller's mistake.
SECTOR = 512


def _allowed(vg, pool):
    vg = lvm_names.lvm_name(vg, 'volume group')
    pool = lvm_names.lvm_name(pool, 'thin pool')
    if f'{vg}/{pool}' not in config.load().lvm.thin_pools:
        raise errors.InvalidArgument(
            f'thin pool {vg}/{pool} is not allowed by the root '
            f'configuration (allowed_thin_pools)')
    return vg, pool


def _address(text):
    address = lvm_names.LvAddress(text)
    _allowed(address.vg, address.pool)
    return address


def _size(value):
    validate.size(value)
    if value == 0 or value % SECTOR:
        raise errors.InvalidArgument(
            f'size {value} is not a positive multiple of {SECTOR} bytes')
    return value


def _thin_pool_row(rows, vg, pool):
    for row in rows:
        if row['lv_name'] == pool and row['segtype'] == 'thin-pool':
            return row
    raise errors.InvalidArgument(f'{vg}/{pool} is not a thin pool')


def _existing(address):
    """The report row of the LV ``address``; NotFound if there is none,
    PathRefused if an LV of that name is not a thin LV of its pool."""
    rows = lvm_tool.report('lvs', _LV_FIELDS, address.full)
    return _thin_lv(address, rows[0] if rows else None)


def _thin_lv(address, row):
    if row is None:
        raise errors.NotFound(f'no LV {address.full}')
    if row['segtype'] != 'thin' or row['pool_lv'] != address.pool:
        raise errors.PathRefused(
            f'{address.full} is not a thin LV of {address.vg}/'
            f'{address.pool}; volsep leaves it alone')
    return row


def _parse_percent(value):
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


@contexts.file_ops.entrypoint
@audit.audited
def report(vg, pool):
    """The thin pool's figures and every LV of volsep's in it:
    {'pool': {size, data_percent, metadata_percent, metadata_size},
     'lvs': [{domain, volume, suffix, size, time, origin, active}]}.
    ``origin`` is the (domain, volume, suffix) of a snapshot's origin,
    when that is one of volsep's LVs."""
    vg, pool = _allowed(vg, pool)
    rows = lvm_tool.report('lvs', _LV_FIELDS, vg)
    row = _thin_pool_row(rows, vg, pool)
    found = []
    for lv in rows:
        parsed = lvm_names.parse_lv_name(lv['lv_name'])
        if parsed is None or lv['segtype'] != 'thin' or \
                lv['pool_lv'] != pool:
            continue
        origin = lvm_names.parse_lv_name(lv['origin']) \
            if lv['origin'] else None
        found.append({'domain': parsed[0], 'volume': parsed[1],
                      'suffix': parsed[2], 'size': int(lv['lv_size']),
                      'time': int(lv['lv_time'] or 0),
                      'origin': list(origin) if origin else None,
                      'active': lv['lv_active'] == 'active'})
    return {'pool': {'size': int(row['lv_size']),
                     'data_percent': _parse_percent(row['data_percent']),
                     'metadata_percent': _parse_percent(
                         row['metadata_percent']),
                     'metadata_size': int(row['lv_metadata_size'] or 0)},
            'lvs': found}


def _activation(active):
    return ['--activate', 'y' if validate.flag(active, 'active') else 'n']


@contexts.file_ops.entrypoint
@audit.audited
def create(lv, size, active):
    """A new, empty thin LV ``lv`` of ``size`` bytes (rounded up to whole
    extents by LVM) in its thin pool; lvcreate itself refuses a name that
    exists (as lvrename does)."""
    address = _address(lv)
    _size(size)
    lvm_tool.run('lvcreate', ['--type', 'thin', '--virtualsize',
                              f'{size}b', '--thinpool', address.pool,
                              '--name', address.lv,
                              '--setactivationskip', 'y']
                 + _activation(active) + ['--ignoreactivationskip',
                                          address.vg])


@contexts.file_ops.entrypoint
@audit.audited
def snapshot(origin, lv, active):
    """A thin snapshot ``lv`` of the thin LV ``origin``, both volsep's and in
    the same thin pool."""
    source = _address(origin)
    address = _address(lv)
    if (source.vg, source.pool) != (address.vg, address.pool):
        raise errors.InvalidArgument(
            f'{origin} and {lv} are not in the same thin pool')
    _existing(source)
    lvm_tool.run('lvcreate', ['--snapshot', '--name', address.lv,
                              '--setactivationskip', 'y']
                 + _activation(active) + ['--ignoreactivationskip',
                                          source.full])


# A commit supersedes at most the revisions a volume keeps beyond its
# setting: a handful, far below this.
_MAX_DROPS = 64


@contexts.file_ops.entrypoint
@audit.audited
def commit(lv, new_suffix, drop_suffixes):
    """Rename ``lv`` to the same volume's LV with ``new_suffix``, which
    must not exist (the step that publishes a generation), then remove
    the volume's LVs with ``drop_suffixes`` (the generations the new one
    supersedes): the commit point and its clean-up as one call, every
    LV checked by one report of the volume group, the removals done by
    one lvremove. A failed rename removes nothing; a removal that fails
    leaves the rename done."""
    address = _address(lv)
    target = address.with_suffix(new_suffix)
    if type(drop_suffixes) not in (list, tuple) or \
            len(drop_suffixes) > _MAX_DROPS:
        raise errors.InvalidArgument(
            f'drop_suffixes must be a list of at most {_MAX_DROPS} suffixes')
    drops = [address.with_suffix(s) for s in drop_suffixes]
    if {d.lv for d in drops} & {address.lv, target.lv} or \
            len({d.lv for d in drops}) != len(drops):
        raise errors.InvalidArgument(
            f'{lv}: drop_suffixes must name other LVs than the renamed '
            f'one, each once')
    rows = {row['lv_name']: row
            for row in lvm_tool.report('lvs', _LV_FIELDS, address.vg)}
    for each in [address] + drops:
        _thin_lv(each, rows.get(each.lv))
    if target.lv in rows:
        raise errors.AlreadyExists(f'{target.full} already exists')
    lvm_device.devices.close_volume(address)
    lvm_tool.run('lvrename', [address.vg, address.lv, target.lv])
    if drops:
        lvm_tool.run('lvremove', ['--force'] + [d.full for d in drops])


@contexts.file_ops.entrypoint
@audit.audited
def resize(lv, size, allow_shrink):
    address = _address(lv)
    _size(size)
    validate.flag(allow_shrink, 'allow_shrink')
    row = _existing(address)
    current = int(row['lv_size'])
    if size < current and not allow_shrink:
        raise errors.InvalidArgument(
            f'{address.full}: shrinking from {current} to {size} bytes '
            f'loses data and was not allowed')
    if size == current:
        return
    lvm_tool.run('lvresize', ['--size', f'{size}b', '--force',
                              address.full])


@contexts.file_ops.entrypoint
@audit.audited
def activate(lv, active):
    address = _address(lv)
    _existing(address)
    if not validate.flag(active, 'active'):
        lvm_device.devices.close(address)
    lvm_tool.run('lvchange', _activation(active) + [
        '--ignoreactivationskip', address.full])


@contexts.file_ops.entrypoint
@audit.audited
def remove(lv):
    address = _address(lv)
    _existing(address)
    lvm_device.devices.close(address)
    lvm_tool.run('lvremove', ['--force', address.full])


def _write_failed(address, err):
    # A thin pool that runs out of data space (with errorwhenfull) fails
    # writes with EIO or ENOSPC, in the write or at the flush.
    if err.errno in (errno.EIO, errno.ENOSPC):
        return errors.NoSpace(
            f'{address.full}: writing failed ({err.strerror}): thin pool '
            f'{address.vg}/{address.pool} is out of space or failing')
    return errors.PrivilegedError(f'{address.full}: {err.strerror}')


def _check_import_target(address):
    if address.suffix != 't':
        raise errors.InvalidArgument(
            f'{address.full}: only an import target (suffix t) is written')


@contexts.file_ops.entrypoint
@audit.audited_stream
def write_at(lv, offset, data):
    """Write ``data`` at ``offset`` of the active LV ``lv``; all-zero data
    is skipped, because a new thin LV reads zeros where nothing was
    written (the importer writes only into LVs it just created)."""
    address = _address(lv)
    validate.size(offset, 'offset')
    if type(data) is not bytes or len(data) > validate.MAX_CHUNK:
        raise errors.InvalidArgument('data must be bytes of at most '
                                     f'{validate.MAX_CHUNK}')
    _check_import_target(address)
    if not data.strip(b'\0'):
        return len(data)
    fd = lvm_device.devices.get(address, writable=True)
    try:
        done = os.pwrite(fd, data, offset)
    except OSError as err:
        raise _write_failed(address, err) from None
    if done != len(data):
        raise errors.NoSpace(f'{address.full}: short write at {offset}')
    return done


@contexts.file_ops.entrypoint
@audit.audited_stream
def read_at(lv, offset, length):
    address = _address(lv)
    validate.size(offset, 'offset')
    validate.size(length, 'length')
    if length > validate.MAX_CHUNK:
        raise errors.InvalidArgument(f'length above {validate.MAX_CHUNK}')
    fd = lvm_device.devices.get(address, writable=False)
    return os.pread(fd, length, offset)


@contextlib.contextmanager
def _stream_device(address, writable):
    """The LV's stream descriptor, closed afterwards; a write or flush that
    fails there is reported as the thin pool's (_write_failed)."""
    fd = lvm_device.devices.get(address, writable=writable)
    try:
        yield fd
    except OSError as err:
        raise _write_failed(address, err) from None
    finally:
        lvm_device.devices.close(address)


@contexts.file_ops.entrypoint
@audit.audited
def flush(lv):
    """fsync the LV's device and close its stream descriptor."""
    with _stream_device(_address(lv), False) as fd:
        os.fsync(fd)


@contexts.file_ops.entrypoint
@audit.audited
def import_file(lv, path):
    """Copy the raw file ``path`` (beneath an allowed root, held in use
    meanwhile) into the start of the import target ``lv``, which must be
    at least as large and new (it reads zeros where nothing is written, so
    only the file's non-zero runs are written), then flush it. The file
    is only read, as bytes: qemu-img, which wrote it from an untrusted
    image, cannot open devices under its confinement."""
    address = _address(lv)
    _check_import_target(address)
    with paths.regular_file(path, os.O_RDONLY) as (fd, st):
        inuse.hold(fd, path)
        room = int(_existing(address)['lv_size'])
        if st.st_size > room:
            raise errors.InvalidArgument(
                f'{path} ({st.st_size} bytes) does not fit {address.full} '
                f'({room} bytes)')
        with _stream_device(address, True) as target:
            for offset, data in copying.nonzero_pieces(fd, st.st_size):
                if os.pwrite(target, data, offset) != len(data):
                    raise errors.NoSpace(
                        f'{address.full}: short write at {offset}')
            os.fsync(target)


@contexts.file_ops.entrypoint
@audit.audited
def export_file(lv, path):
    """Write the whole content of the export snapshot ``lv`` (suffix e) as
    a new raw file ``path`` (beneath an allowed root; named only once
    complete and flushed), its zero blocks left as holes: what qemu-img
    converts an export from, since it cannot open devices."""
    address = _address(lv)
    if address.suffix != 'e':
        raise errors.InvalidArgument(
            f'{address.full}: only an export snapshot (suffix e) is '
            f'written out')
    _existing(address)
    with paths.parent_of(path) as (parent, name), \
            paths.anonymous_file(parent, 0o600) as fd:
        source = lvm_device.open_checked(address, writable=False)
        try:
            size = os.lseek(source, 0, os.SEEK_END)
            os.ftruncate(fd, size)
            for offset in range(0, size, validate.MAX_CHUNK):
                length = min(validate.MAX_CHUNK, size - offset)
                data = os.pread(source, length, offset)
                if len(data) != length:
                    raise errors.PrivilegedError(
                        f'{address.full}: short read at {offset}')
                holes.write(fd, offset, data)
        finally:
            os.close(source)
        os.fsync(fd)
        paths.publish(fd, parent, name, path)
        paths.fsync_directory(parent)
