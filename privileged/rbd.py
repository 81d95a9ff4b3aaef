"""Ceph RBD entrypoints: each does one thing to volsep's images in an
allowed pool, through librados/librbd (Debian's Python bindings).

The caller names a pool, a domain and a volume, never an image, a path or a
ceph.conf: the pool must be in the root configuration's `ceph_pools`, the
names must match the name pattern, and the image names are built here:

    DOMAIN+VOLUME      the anchor: no data, the volume's configuration in
                       its image metadata and its owner's lock
    DOMAIN+VOLUME+d    the data: what a hypervisor attaches; committed
                       generations are its snapshots c1, c2, ...
    DOMAIN+VOLUME+n    an instant clone, staged until it replaces +d
    DOMAIN+VOLUME+aN   a data image an instant clone (or a revert to one
                       of its revisions) replaced, N being its newest
                       generation: kept, read-only, while it holds
                       generations that are still revisions

'+' is in no name, so the mapping is injective and no other image of the
pool is ever reachable. The cluster connection and the client's keyring
come from the root configuration alone; the unprivileged side never sees
either.
"""

import errno
import os
import re
import threading
import time

from volsep.privileged import audit
from volsep.privileged import config
from volsep.privileged import contexts
from volsep.privileged import copying
from volsep.privileged import errors
from volsep.privileged import holes
from volsep.privileged import inuse
from volsep.privileged import paths
from volsep.privileged import validate

NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z')
# The keys a volume's anchor records (read one by one: this librbd's
# Python metadata_list pairs keys with the wrong values after an empty one).
META_KEYS = ('kind', 'size', 'rw', 'revisions_to_keep', 'source', 'import')
META_PREFIX = 'volsep.'
MAX_META_VALUE = 4096
MAX_GENERATION = 10 ** 18
LOCK_TAG_PREFIX = 'volsep '
# librados gives up on a monitor or OSD that does not answer after this
# long, so a wedged cluster cannot hold a root daemon thread for good.
OP_TIMEOUT = '30'
# How long a fenced client stays blocklisted (Ceph's own default).
BLOCKLIST_SECONDS = 3600
# A blocklisted client's watch on an image (which makes its removal
# busy) lasts until the OSD sees the new map (about 0.3 s on an idle
# host, over 10 s on a loaded one), and at most until the watch times out
# (osd_client_watch_timeout, 30 s by default).
WATCH_GONE_SECONDS = 40
# The clients this daemon blocklisted: their watches are about to go.
_blocklisted = set()


class OwnershipLost(errors.PrivilegedError):
    """This host no longer owns the volume: another host fenced it."""

    error_class = 'VolumeBusy'


class Owned(errors.PrivilegedError):
    """Another host owns the volume."""

    error_class = 'VolumeBusy'


def _name(value, what):
    if type(value) is not str or not NAME.match(value):
        raise errors.InvalidArgument(f'{what} name {value!r} is not valid')
    return value


def _pool(value):
    _name(value, 'Ceph pool')
    if value not in config.load().ceph[0]:
        raise errors.InvalidArgument(
            f'Ceph pool {value!r} is not allowed by the root configuration')
    return value


def _generation_id(value):
    if type(value) is not int or not 0 < value < MAX_GENERATION:
        raise errors.InvalidArgument(f'generation {value!r} is not valid')
    return value


def _generation(value):
    return f'c{_generation_id(value)}'


def _holder(domain, volume, archive):
    """The image that holds a generation: the data image, or with
    ``archive`` (an int) that archive."""
    if archive is None:
        return data_name(domain, volume)
    return archive_name(domain, volume, archive)


def _data_features(session):
    """Layering (clones) and deep-flatten (a clone's snapshots can be
    detached from its parent), but not exclusive-lock (nor object-map and
    fast-diff, which need it): the ownership is the anchor's advisory
    lock, and librbd's automatic lock, still held by a killed daemon's
    client, would refuse a restarted service every change of the image
    until the dead client's watch times out (30 s)."""
    return session.rbd.RBD_FEATURE_LAYERING | \
        session.rbd.RBD_FEATURE_DEEP_FLATTEN


def anchor_name(domain, volume):
    return f'{_name(domain, "domain")}+{_name(volume, "volume")}'


def data_name(domain, volume):
    return anchor_name(domain, volume) + '+d'


def staged_name(domain, volume):
    return anchor_name(domain, volume) + '+n'


def archive_name(domain, volume, archive):
    return f'{anchor_name(domain, volume)}+a{_generation_id(archive)}'


_ANCHOR = re.compile(r'([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\+'
                     r'([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\Z')
_SNAP = re.compile(r'c([1-9][0-9]{0,17})\Z')
# A volume's image that may be a clone: its anchor's name, then the kind.
_CHILD = re.compile(r'([A-Za-z0-9][A-Za-z0-9_.-]{0,63}\+'
                    r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63})\+'
                    r'(?:[dn]|a[1-9][0-9]{0,17})\Z')
_ARCHIVE = re.compile(r'([A-Za-z0-9][A-Za-z0-9_.-]{0,63}\+'
                      r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63})\+a([1-9][0-9]{0,17})'
                      r'\Z')


class _Cluster:
    """One connection per daemon, made on first use; dropped when the
    cluster has shut this client out (blocklisted), so later calls get a
    new identity while a call about a fenced volume still fails."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rados = None

    def get(self):
        import rados
        with self._lock:
            if self._rados is None:
                _, conf, client = config.load().ceph
                cluster = rados.Rados(conffile=conf, rados_id=client)
                cluster.conf_set('rados_osd_op_timeout', OP_TIMEOUT)
                cluster.conf_set('rados_mon_op_timeout', OP_TIMEOUT)
                cluster.connect(timeout=int(OP_TIMEOUT))
                self._rados = cluster
            return self._rados

    def drop(self, cluster):
        with self._lock:
            if self._rados is cluster:
                self._rados = None
        try:
            cluster.shutdown()
        except Exception:
            pass


_cluster = _Cluster()


class _Session:
    """An open pool for one entrypoint call, translating librados and
    librbd errors into volsep's."""

    def __init__(self, pool):
        self.pool = _pool(pool)

    def __enter__(self):
        import rbd
        self.rbd = rbd
        self.cluster = _cluster.get()
        try:
            self.ioctx = self.cluster.open_ioctx(self.pool)
        except Exception as err:
            self._fail(err)
        return self

    def __exit__(self, kind, exc, tb):
        if hasattr(self, 'ioctx'):
            self.ioctx.close()
        if exc is not None and not isinstance(exc, errors.PrivilegedError):
            self._fail(exc)

    def _fail(self, err):
        code = getattr(err, 'errno', None)
        if code in (errno.ESHUTDOWN, 108):
            _cluster.drop(self.cluster)
            raise OwnershipLost(
                f'this host was fenced (blocklisted) by the Ceph cluster: '
                f'{err}') from None
        if code == errno.ENOENT:
            raise errors.NotFound(f'Ceph: {err}') from None
        if code == errno.EEXIST:
            raise errors.AlreadyExists(f'Ceph: {err}') from None
        if code == errno.EBUSY:
            raise errors.InUse(f'Ceph: {err}') from None
        if code == errno.ENOSPC:
            raise errors.NoSpace(f'Ceph: {err}') from None
        raise errors.PrivilegedError(f'Ceph: {type(err).__name__}: {err}') \
            from None

    def image(self, name, snapshot=None, read_only=False):
        return self.rbd.Image(self.ioctx, name, snapshot=snapshot,
                              read_only=read_only)

    def me(self):
        return f'client.{self.cluster.get_instance_id()}'


def _owner(lockers):
    """(host, client, address) of an anchor's lock, or None."""
    for client, cookie, address in lockers.get('lockers', ()) if lockers \
            else ():
        host = cookie[len(LOCK_TAG_PREFIX):] if cookie.startswith(
            LOCK_TAG_PREFIX) else cookie
        return [host, client, address]
    return None


def _snapshots(image):
    found = []
    for snap in image.list_snaps():
        match = _SNAP.match(snap['name'])
        if match and snap.get('namespace', 0) == 0:
            found.append([int(match.group(1)), snap['size'],
                          image.get_snap_timestamp(snap['id']).strftime(
                              '%Y-%m-%dT%H:%M:%SZ')])
    return sorted(found)


def _describe_data(session, name):
    """{size, snaps, parent} of a data image; {'partial': True} for one
    that is listed but cannot be opened (a removal cut short: librbd
    drops the header before the directory entry)."""
    try:
        image = session.image(name, read_only=True)
    except session.rbd.ImageNotFound:
        return {'partial': True}
    with image:
        parent = None
        try:
            info = image.get_parent_image_spec()
            parent = [info['image_name'], info['snap_name']]
        except session.rbd.ImageNotFound:
            pass
        return {'size': image.size(), 'snaps': _snapshots(image),
                'parent': parent}


def _read_meta(session, anchor):
    meta = {}
    for key in META_KEYS:
        try:
            meta[key] = anchor.metadata_get(META_PREFIX + key)
        except KeyError:
            pass
    return meta


def _archives(names):
    """{anchor: [N, ...]} of the archive images +aN among ``names``."""
    found = {}
    for name in names:
        match = _ARCHIVE.match(name)
        if match:
            found.setdefault(match.group(1), []).append(int(match.group(2)))
    return found


@contexts.file_ops.entrypoint
@audit.audited
def scan(pool, domain=None, volume=None):
    """Every volsep volume of ``pool``, or with ``domain`` and ``volume``
    that one only (none other's images are opened): {'DOMAIN/VOLUME':
    {meta, owner, data, partial, staged, archives}}; ``data`` is None
    without a data image (or with one whose removal was cut short: then
    ``partial`` is true); ``staged`` says whether an instant clone's
    staged image (+n) is there; ``archives`` is [[N, data]] of the
    archives +aN, oldest first (data as for +d)."""
    only = None
    if domain is not None or volume is not None:
        only = anchor_name(domain, volume)
    with _Session(pool) as s:
        names = set(s.rbd.RBD().list(s.ioctx))
        archives = _archives(names)
        result = {}
        anchors = sorted(names) if only is None else \
            [only] if only in names else []
        for name in anchors:
            match = _ANCHOR.match(name)
            if not match:
                continue
            try:
                with s.image(name, read_only=True) as anchor:
                    meta = _read_meta(s, anchor)
                    owner = _owner(anchor.list_lockers())
            except s.rbd.ImageNotFound:
                continue  # removed since the listing
            if not meta:
                continue  # not one of volsep's
            data = _describe_data(s, name + '+d') \
                if name + '+d' in names else None
            partial = bool(data and data.get('partial'))
            result[f'{match.group(1)}/{match.group(2)}'] = {
                'meta': meta, 'owner': owner, 'partial': partial,
                'data': None if partial else data,
                'staged': name + '+n' in names,
                'archives': [[n, _describe_data(s, f'{name}+a{n}')]
                             for n in sorted(archives.get(name, ()))]}
        return result


def _check_meta(meta):
    if type(meta) is not dict or not meta or len(meta) > 32:
        raise errors.InvalidArgument('metadata must be a non-empty dict')
    for key, value in meta.items():
        if type(key) is not str or key not in META_KEYS:
            raise errors.InvalidArgument(f'metadata key {key!r} is not '
                                         f'valid')
        if type(value) is not str or not value or \
                len(value) > MAX_META_VALUE or not value.isprintable():
            raise errors.InvalidArgument(f'metadata value of {key} is not '
                                         f'valid')
    return meta


@contexts.file_ops.entrypoint
@audit.audited
def create(pool, domain, volume, meta):
    """Make a volume's anchor, carrying ``meta``; refuses an existing one."""
    name = anchor_name(domain, volume)
    _check_meta(meta)
    with _Session(pool) as s:
        # Layering only: no exclusive-lock feature, whose automatic lock
        # would fight the advisory ownership lock on the same image.
        s.rbd.RBD().create(s.ioctx, name, 0, old_format=False,
                           features=s.rbd.RBD_FEATURE_LAYERING)
        with s.image(name) as anchor:
            for key, value in sorted(meta.items()):
                anchor.metadata_set(META_PREFIX + key, value)


@contexts.file_ops.entrypoint
@audit.audited
def set_meta(pool, domain, volume, meta):
    name = anchor_name(domain, volume)
    _check_meta(meta)
    with _Session(pool) as s, s.image(name) as anchor:
        for key, value in sorted(meta.items()):
            anchor.metadata_set(META_PREFIX + key, value)


@contexts.file_ops.entrypoint
@audit.audited
def remove(pool, domain, volume):
    """Remove a volume: its data image (with its snapshots), then its
    anchor. Refused, changing nothing, while any host owns it or while a
    snapshot volume is cloned from it."""
    name = anchor_name(domain, volume)
    with _Session(pool) as s:
        with s.image(name, read_only=True) as anchor:
            owner = _owner(anchor.list_lockers())
        if owner:
            raise Owned(f'{domain}:{volume} is owned by host {owner[0]}')
        # Newest first: an image may be a clone of an older one of its
        # own (a revert to a revision in an archive), never of a newer.
        archives = _archives(s.rbd.RBD().list(s.ioctx)).get(name, ())
        for image in [name + '+n', name + '+d'] + [
                f'{name}+a{n}' for n in sorted(archives, reverse=True)]:
            _remove_data(s, image)
        _remove_image(s, name, any_watcher_goes=True)


def _remove_data(session, name):
    try:
        image = session.image(name)
    except session.rbd.ImageNotFound:
        try:   # finish a removal cut short, if that is what this is
            _remove_image(session, name)
        except session.rbd.ImageNotFound:
            pass
        return
    with image:
        _detach_children(session, image, name)
        for snap in image.list_snaps():
            if snap.get('namespace', 0) == 0:
                image.remove_snap(snap['name'])
    _remove_image(session, name)


def _clones(session, image, name):
    """The clones of any snapshot of ``image`` (named ``name``), all of
    which can be flattened: each must be a persistent volume's own image
    in the same pool. Any other (a snapshot volume's working copy, or an
    image that is not volsep's) is a user of the image: InUse."""
    found, busy = [], []
    for child in image.list_children2():
        match = _CHILD.match(child['image'])
        kind = None
        if match and child['pool'] == session.pool and \
                not child['pool_namespace'] and not child['trash']:
            try:
                with session.image(match.group(1), read_only=True) as a:
                    kind = _read_meta(session, a).get('kind')
            except session.rbd.ImageNotFound:
                pass
        (found if kind == 'persistent' else busy).append(child['image'])
    if busy:
        raise errors.InUse(f'{name} has clones that are in use (running '
                           f'snapshot volumes): {", ".join(sorted(busy))}')
    return found


def _check_detachable(session, name):
    try:
        image = session.image(name, read_only=True)
    except session.rbd.ImageNotFound:
        return
    with image:
        _clones(session, image, name)


def _detach_children(session, image, name):
    """Flatten the persistent volumes cloned from ``image`` (each becomes
    a full copy, its snapshots too: deep-flatten), so that it can go;
    refuse, changing nothing, if any other clone uses it."""
    for child in _clones(session, image, name):
        with session.image(child) as clone:
            clone.flatten()


def _blocklist(cluster, address):
    cluster.blocklist_add(address, BLOCKLIST_SECONDS)
    _blocklisted.add(address)


def _fence_writers(session, name):
    """Blocklist every other client that has image ``name`` open for
    writing: the owner's hypervisor has a Ceph client of its own, which
    the volume's lock does not name. Read-only opens (exports, scans)
    register no watch, so no reader is shut out."""
    try:
        with session.image(name, read_only=True) as image:
            writers = {w['addr'] for w in image.watchers_list()}
    except session.rbd.ImageNotFound:
        return
    for address in sorted(writers - {session.cluster.get_addrs()}):
        _blocklist(session.cluster, address)


def _remove_image(session, name, any_watcher_goes=False):
    """Remove an image, waiting a little while the only clients that
    still watch it are ones this daemon blocklisted (a killed earlier run
    of this service, or a fenced host): any other watcher is a user of the
    image, and its removal is refused at once (InUse). With
    ``any_watcher_goes`` (an anchor, which no hypervisor opens: a watch on
    it is a volsep call of the moment or a killed client's, which lasts
    until it times out) every watcher is waited for."""
    deadline = time.monotonic() + WATCH_GONE_SECONDS
    while True:
        try:
            session.rbd.RBD().remove(session.ioctx, name)
            return
        except session.rbd.ImageBusy:
            with session.image(name, read_only=True) as image:
                watchers = {w['addr'] for w in image.watchers_list()}
            if not (any_watcher_goes or watchers <= _blocklisted) or \
                    time.monotonic() > deadline:
                raise
        time.sleep(0.1)


# -- ownership ---------------------------------------------------------------

@contexts.file_ops.entrypoint
@audit.audited
def acquire(pool, domain, volume, host):
    """Take the volume for ``host`` (an exclusive advisory lock on its
    anchor, cookie naming the host). Already this host's: kept (see
    _check_ours)."""
    name = anchor_name(domain, volume)
    cookie = LOCK_TAG_PREFIX + _name(host, 'host')
    with _Session(pool) as s, s.image(name) as anchor:
        try:
            anchor.lock_exclusive(cookie)
        except (s.rbd.ImageBusy, s.rbd.ImageExists):
            owner = _owner(anchor.list_lockers())
            if owner and owner[0] == host:
                return _check_ours(s, anchor, domain, volume, host)
            holder, client, address = owner or ('?', '?', '?')
            raise Owned(f'{domain}:{volume} is running on host {holder} '
                        f'({client} at {address})') from None
        return _owner(anchor.list_lockers())


def _check_ours(session, anchor, domain, volume, host):
    """This daemon's lock on the (writable) anchor, or OwnershipLost.

    A lock with this host's cookie but another Ceph client is an earlier
    run of this host's service, killed before it released the volume (host
    ids are unique per host and a service has one client, this daemon's):
    it is adopted. That client is blocklisted first, so that if it still
    lives it can never write again, then its lock is replaced by this
    daemon's, and the volume stays this host's across the restart."""
    owner = _owner(anchor.list_lockers())
    if owner and owner[0] == host and owner[1] != session.me():
        _blocklist(session.cluster, owner[2])
        cookie = LOCK_TAG_PREFIX + host
        try:
            anchor.break_lock(owner[1], cookie)
            anchor.lock_exclusive(cookie)
        except (session.rbd.ImageNotFound, session.rbd.ImageBusy,
                session.rbd.ImageExists):
            pass   # a fence or another host came first: said below
        owner = _owner(anchor.list_lockers())
    if owner is None or owner[0] != host or owner[1] != session.me():
        holder = f'host {owner[0]}' if owner else 'nobody'
        raise OwnershipLost(
            f'{domain}:{volume}: this host ({host}) lost its ownership; '
            f'it is now held by {holder}')
    return owner


@contexts.file_ops.entrypoint
@audit.audited
def check_owner(pool, domain, volume, host):
    """Refuse (OwnershipLost) unless this daemon still owns the volume."""
    name = anchor_name(domain, volume)
    _name(host, 'host')
    with _Session(pool) as s, s.image(name) as anchor:
        return _check_ours(s, anchor, domain, volume, host)


@contexts.file_ops.entrypoint
@audit.audited
def release(pool, domain, volume, host):
    """Give up this host's ownership; OwnershipLost if it was not ours."""
    name = anchor_name(domain, volume)
    _name(host, 'host')
    with _Session(pool) as s, s.image(name) as anchor:
        _check_ours(s, anchor, domain, volume, host)
        anchor.unlock(LOCK_TAG_PREFIX + host)


@contexts.file_ops.entrypoint
@audit.audited
def fence(pool, domain, volume):
    """Free a volume whose owner is gone: blocklist the owner's client
    and every client writing the volume's data (the owner's hypervisor), so
    that none can write to the cluster again, then break its lock. Returns
    the fenced owner (None if nobody owned it)."""
    name = anchor_name(domain, volume)
    with _Session(pool) as s, s.image(name) as anchor:
        owner = _owner(anchor.list_lockers())
        if owner is None:
            return None
        _blocklist(s.cluster, owner[2])
        _fence_writers(s, data_name(domain, volume))
        cookie = anchor.list_lockers()['lockers'][0][1]
        anchor.break_lock(owner[1], cookie)
        return owner


# -- data --------------------------------------------------------------------

@contexts.file_ops.entrypoint
@audit.audited
def create_data(pool, domain, volume, size):
    name = data_name(domain, volume)
    validate.size(size)
    with _Session(pool) as s:
        s.rbd.RBD().create(s.ioctx, name, size, old_format=False,
                           features=_data_features(s))


@contexts.file_ops.entrypoint
@audit.audited
def remove_data(pool, domain, volume):
    with _Session(pool) as s:
        _remove_data(s, data_name(domain, volume))


@contexts.file_ops.entrypoint
@audit.audited
def resize_data(pool, domain, volume, size, allow_shrink=False):
    name = data_name(domain, volume)
    validate.size(size)
    validate.flag(allow_shrink, 'allow_shrink')
    with _Session(pool) as s, s.image(name) as image:
        if size < image.size() and not allow_shrink:
            raise errors.InvalidArgument('shrinking needs allow_shrink')
        image.resize(size, allow_shrink=allow_shrink)


@contexts.file_ops.entrypoint
@audit.audited
def commit(pool, domain, volume, generation, host=None):
    """Snapshot the data image as committed generation ``generation``;
    with ``host``, only while that host (this daemon) owns the volume."""
    snap = _generation(generation)
    name = data_name(domain, volume)
    with _Session(pool) as s:
        if host is not None:
            with s.image(anchor_name(domain, volume)) as anchor:
                _check_ours(s, anchor, domain, volume, _name(host, 'host'))
        with s.image(name) as image:
            image.create_snap(snap)


@contexts.file_ops.entrypoint
@audit.audited
def drop_generation(pool, domain, volume, generation, archive=None):
    """Remove a committed generation, of the data image or of the archive
    ``archive``; a snapshot volume's clone of it keeps its data (clone v2
    moves it to the trash namespace)."""
    snap = _generation(generation)
    with _Session(pool) as s, \
            s.image(_holder(domain, volume, archive)) as image:
        image.remove_snap(snap)


@contexts.file_ops.entrypoint
@audit.audited
def remove_archive(pool, domain, volume, archive):
    """Remove an archive that holds no revision any more (the persistent
    volumes cloned from it flattened first)."""
    with _Session(pool) as s:
        _remove_data(s, archive_name(domain, volume, archive))


@contexts.file_ops.entrypoint
@audit.audited
def rollback(pool, domain, volume, generation):
    """Make the data image's head the content of a generation."""
    snap = _generation(generation)
    with _Session(pool) as s, s.image(data_name(domain, volume)) as image:
        image.rollback_to_snap(snap)


@contexts.file_ops.entrypoint
@audit.audited
def clone_generation(pool, src_domain, src_volume, generation, domain,
                     volume):
    """Make a volume's data image a copy-on-write clone of another
    volume's committed generation (a snapshot volume's start)."""
    snap = _generation(generation)
    parent = data_name(src_domain, src_volume)
    child = data_name(domain, volume)
    with _Session(pool) as s:
        # Clone v2 (rbd_default_clone_format = 2 in the cluster's conf):
        # the parent snapshot needs no protection and can be pruned.
        s.rbd.RBD().clone(s.ioctx, parent, snap, s.ioctx, child,
                          features=_data_features(s))


@contexts.file_ops.entrypoint
@audit.audited
def stage_clone(pool, src_domain, src_volume, generation, domain, volume,
                new_generation, src_archive=None):
    """An instant clone, staged: a copy-on-write clone of a volume's
    committed generation (of its data image, or of its archive
    ``src_archive``: a revert to a revision kept there) as this volume's
    staged image, its content committed as ``new_generation``. Nothing
    the volume shows changes until swap_staged; a staged image left by a
    crash is dropped by discard_staged. Refused while a snapshot volume
    is running from this volume."""
    snap = _generation(generation)
    parent = _holder(src_domain, src_volume, src_archive)
    new_snap = _generation(new_generation)
    staged = staged_name(domain, volume)
    with _Session(pool) as s:
        _check_detachable(s, data_name(domain, volume))
        # Clone v2 (rbd_default_clone_format = 2 in the cluster's conf):
        # the parent snapshot needs no protection and can be pruned.
        s.rbd.RBD().clone(s.ioctx, parent, snap, s.ioctx, staged,
                          features=_data_features(s))
        with s.image(staged) as image:
            image.create_snap(new_snap)


@contexts.file_ops.entrypoint
@audit.audited
def swap_staged(pool, domain, volume):
    """Make the staged image the volume's data image: the data image
    becomes the archive +aN (N its newest generation), keeping its
    generations as revisions (its clones follow it), then the staged one
    takes its name. Each step is one rename: a swap cut short is finished
    by calling this again."""
    data = data_name(domain, volume)
    staged = staged_name(domain, volume)
    with _Session(pool) as s:
        names = set(s.rbd.RBD().list(s.ioctx))
        if staged not in names:
            return
        if data in names:
            with s.image(data, read_only=True) as image:
                snaps = _snapshots(image)
            if not snaps:
                raise errors.PrivilegedError(
                    f'{data} has no committed generation to archive')
            s.rbd.RBD().rename(s.ioctx, data, archive_name(
                domain, volume, snaps[-1][0]))
        s.rbd.RBD().rename(s.ioctx, staged, data)


@contexts.file_ops.entrypoint
@audit.audited
def discard_staged(pool, domain, volume):
    """Drop a staged clone that was never swapped in."""
    with _Session(pool) as s:
        _remove_data(s, staged_name(domain, volume))


@contexts.file_ops.entrypoint
@audit.audited
def write_at(pool, domain, volume, offset, data):
    validate.size(offset, 'offset')
    if type(data) is not bytes or len(data) > validate.MAX_CHUNK:
        raise errors.InvalidArgument('data must be bytes of at most '
                                     f'{validate.MAX_CHUNK}')
    with _Session(pool) as s, s.image(data_name(domain, volume)) as image:
        if offset + len(data) > image.size():
            raise errors.InvalidArgument('write beyond the image')
        if data.count(0) == len(data):
            image.discard(offset, len(data))  # keep the image sparse
        else:
            image.write(data, offset)
        return len(data)


@contexts.file_ops.entrypoint
@audit.audited
def read_at(pool, domain, volume, generation, offset, length):
    snap = _generation(generation)
    validate.size(offset, 'offset')
    if type(length) is not int or not 0 <= length <= validate.MAX_CHUNK:
        raise errors.InvalidArgument('length is out of range')
    with _Session(pool) as s, \
            s.image(data_name(domain, volume), snapshot=snap,
                    read_only=True) as image:
        return image.read(offset, max(min(length, image.size() - offset), 0))


@contexts.file_ops.entrypoint
@audit.audited
def import_file(pool, domain, volume, path):
    """Make the data image's head exactly the raw file ``path`` (beneath
    an allowed root, held in use meanwhile): its size, its data extents
    written, the rest discarded, then flushed. The file is only read, as
    bytes: qemu-img, which wrote it from an untrusted image, cannot reach
    Ceph under its confinement, so its output is copied in here."""
    with paths.regular_file(path, os.O_RDONLY) as (fd, st), \
            _Session(pool) as s, s.image(data_name(domain, volume)) as image:
        inuse.hold(fd, path)
        size = st.st_size
        validate.size(size)
        image.resize(size, allow_shrink=True)
        image.discard(0, size)
        for offset, data in copying.nonzero_pieces(fd, size):
            image.write(data, offset)
        image.flush()


@contexts.file_ops.entrypoint
@audit.audited
def export_file(pool, domain, volume, generation, path):
    """Write a committed generation as a new raw file ``path`` (beneath an
    allowed root; published only once complete and flushed), its
    unallocated extents left as holes: what qemu-img converts an export
    from, since it cannot reach Ceph under its confinement."""
    snap = _generation(generation)
    with paths.parent_of(path) as (parent, name), \
            paths.anonymous_file(parent, 0o600) as fd, \
            _Session(pool) as s, \
            s.image(data_name(domain, volume), snapshot=snap,
                    read_only=True) as image:
        size = image.size()
        os.ftruncate(fd, size)

        def copy(offset, length, exists):
            if exists:
                for at in range(offset, offset + length, validate.MAX_CHUNK):
                    holes.write(fd, at, image.read(at, min(
                        validate.MAX_CHUNK, offset + length - at)))
            return 0
        image.diff_iterate(0, size, None, copy, include_parent=True,
                           whole_object=False)
        os.fsync(fd)
        paths.publish(fd, parent, name, path)
        paths.fsync_directory(parent)


@contexts.file_ops.entrypoint
@audit.audited
def flush(pool, domain, volume):
    with _Session(pool) as s, s.image(data_name(domain, volume)) as image:
        image.flush()


@contexts.file_ops.entrypoint
@audit.audited
def usage(pool):
    """{'size', 'used', 'free'} of the cluster, in bytes."""
    with _Session(pool) as s:
        stats = s.cluster.get_cluster_stats()
        return {'size': stats['kb'] * 1024, 'used': stats['kb_used'] * 1024,
                'free': stats['kb_avail'] * 1024}
