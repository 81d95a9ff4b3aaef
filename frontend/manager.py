"""Pools, domains and their volumes: the decisions of the frontend.

One lock per volume serialises operations on it; operations on different
volumes run in parallel. A domain's volumes start and stop in parallel, all
are waited for, then the first error is raised. Every change to settings is
saved to its domain's document (or the pools' document) before the call
returns; starting and stopping touch only the domain's running mark (and,
for a chain driver's stop, its document), so they cost the same however
many other domains exist (state.py).
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import logging
import threading

from volsep.drivers import base
from volsep.drivers import errors
from volsep.drivers import validation
from volsep.frontend import chains
from volsep.frontend import drivers
from volsep.frontend import libvirt_xml
from volsep.frontend import state as state_module
from volsep.privileged import audit as root_audit
from volsep.privileged import chain as root_chain
from volsep.privileged import errors as root_errors
from volsep.privileged import images
from volsep.privileged import qemu


def _is_no_space(exc):
    return (isinstance(exc, root_errors.NoSpace) or
            (type(exc) is OSError and exc.errno in (errno.ENOSPC,
                                                    errno.EDQUOT)))


def _pools_named(manager, args):
    """'pool NAME' for the pools a call's addresses or pool names lead to
    (a full filesystem is reported as the pool's)."""
    names = []
    for arg in args:
        if not isinstance(arg, str):
            continue
        if arg in manager.pools:
            names.append(arg)
            continue
        domain, _, volume = arg.partition(':')
        config = manager.domains.get(domain, Domain()).volumes.get(volume)
        if config is not None:
            names.append(config.pool)
    names = list(dict.fromkeys(names))
    return ('pool ' + ', '.join(names)) if names else 'a pool'


# At most this many volume actions of domain starts and stops run at once;
# more wait their turn.
_VOLUME_WORKERS = 64
LOG = logging.getLogger('volsep.manager')

def _contract_errors(cls):
    """Every public method raises only contract errors (drivers.errors):
    root-side errors are turned into the class they name."""
    def wrap(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if _is_no_space(exc):
                    raise errors.StorageError(
                        f'{_pools_named(args[0], args[1:])}: no space left '
                        f'on the filesystem ({exc})') from exc
                replacement = errors.translated(exc)
                if replacement is None:
                    raise
                raise replacement from exc
        return wrapper
    for name, value in list(vars(cls).items()):
        if callable(value) and not name.startswith('_'):
            setattr(cls, name, wrap(value))
    return cls


class Domain:
    def __init__(self, running=False):
        self.running = running
        self.volumes = {}  # name -> base.VolumeConfig


@dataclasses.dataclass
class _PendingImport:
    fmt: str
    check: object           # images.ImageCheck; None for raw
    inspected: bool = False
    path: str = None        # the file the stream goes into
    max_size: int = None    # the largest size the volume may take
    limit_text: str = ''    # where that bound comes from, for errors
    pool: str = None        # where the stream's bytes are reserved
    reserved: int = 0
    current: int = 0        # the volume's size when the import began
    force: bool = False     # whether the import may shrink the volume
    handed_over: bool = False   # copied from a descriptor: check unfed


def parse_address(address):
    if type(address) is not str or address.count(':') != 1:
        raise errors.InvalidArgument(
            f'a volume is addressed as DOMAIN:VOLUME, not {address!r}')
    domain, name = address.split(':')
    return validation.name(domain, 'domain'), validation.name(name, 'volume')


@_contract_errors
class Manager:
    def __init__(self, state_dir):
        self.store = state_module.StateStore(state_dir)
        self.pools = {}
        self.domains = {}
        self.default_pool = None
        # Pools, and adding or removing domains and volumes. Starting and
        # stopping a domain never takes it: lookups are single dict reads
        # and each domain's document is saved under its own lock.
        self._lock = threading.RLock()
        self._snapshots = collections.defaultdict(list)  # source vid -> cfgs
        self._interrupted_stops = []  # domains whose stop a crash cut short
        self._volume_locks = collections.defaultdict(threading.Lock)
        # A domain's start and stop exclude each other; its volumes still
        # start in parallel under their own locks.
        self._domain_locks = collections.defaultdict(threading.Lock)
        # Where the volumes of a domain start and stop side by side. One
        # pool for all: starting threads for each call cost more CPU than
        # the calls' own work. No action waits for another, so a busy pool
        # only queues.
        self._volume_workers = concurrent.futures.ThreadPoolExecutor(
            _VOLUME_WORKERS, thread_name_prefix='volsep-volume')
        self._importing = {}  # vid -> _PendingImport
        # vid -> exports reading the committed image itself (export_direct)
        self._direct_exports = collections.Counter()
        self._reserved = collections.Counter()  # pool -> bytes of streams
        # Sizes for `volume list`, read from disk: only volsep changes a
        # volume's files and always under its lock, whose release drops the
        # entry (see _volume_lock), so a cached size is never stale.
        self._sizes = {}
        self._epochs = collections.Counter()  # lock releases per volume
        # vid -> (epoch, what its last start or stop left): see _remember
        self._left = {}
        # pool name -> an extra byte limit or None, on top of each pool's
        # max_volume_size option; volsepd sets it from the policy file.
        self.size_limits = None
        self._load()

    # -- state -------------------------------------------------------------

    def _load(self):
        snapshot = self.store.load()
        for path in self.store.removed_temporaries:
            LOG.warning('removed %s, left by an interrupted save', path)
        self.default_pool = snapshot.default_pool
        for name, (driver, options) in snapshot.pools.items():
            self.pools[name] = drivers.load(driver)(name, options)
        for name, volumes in snapshot.domains.items():
            mark = snapshot.marks.get(name)
            domain = self.domains[name] = Domain(
                mark == state_module.RUNNING)
            if mark == state_module.STOPPING:
                self._interrupted_stops.append(name)
            for vol in volumes:
                domain.volumes[vol['name']] = base.VolumeConfig(
                    domain=name, name=vol['name'], pool=vol['pool'],
                    kind=vol['kind'], size=vol['size'], rw=vol['rw'],
                    revisions_to_keep=vol['revisions_to_keep'],
                    source=vol['source'], format=vol['format'],
                    chain=vol['chain'])
        for domain in self.domains.values():
            for config in domain.volumes.values():
                if config.source:
                    config.source = self._config(config.source)
                    self._snapshots[config.source.vid].append(config)

    def _save_pools(self):
        self.store.save_pools(
            {name: (pool.driver, self._option_strings(pool))
             for name, pool in self.pools.items()}, self.default_pool)

    def _save_domain(self, name):
        """Write domain ``name``'s document (nothing if it did not
        change); no volumes left removes it."""
        domain = self.domains.get(name)
        self.store.save_domain(name, [
            {'name': c.name, 'pool': c.pool, 'kind': c.kind,
             'size': c.size, 'rw': c.rw,
             'revisions_to_keep': c.revisions_to_keep,
             'source': c.source.address if c.source else None,
             'format': c.format, 'chain': c.chain}
            for c in (domain.volumes.values() if domain else ())])

    @staticmethod
    def _option_strings(pool):
        out = {}
        for key, value in pool.options.items():
            out[key] = ('yes' if value else 'no') if type(value) is bool \
                else str(value)
        return out

    def reconcile(self):
        """Bring every volume in line with its domain's recorded state:
        finish interrupted commits, drop leftovers, and leave stopped
        domains with no working copies. One scan per pool finds the few
        volumes that need work. Removals a crash interrupted are finished
        (or undone) first."""
        for name, pool in self.pools.items():
            if hasattr(pool, 'finish_removals'):
                for action, path in pool.finish_removals(
                        self._recorded_vids(name)):
                    LOG.warning('pool %s: %s %s, left by an interrupted '
                                'volume removal (or, in an rbd pool, '
                                'import or export)', name, action, path)
        scans = {name: pool.listings() for name, pool in self.pools.items()}
        for name, domain in list(self.domains.items()):
            if domain.running and self._stop_was_cut_short(domain, scans):
                domain.running = False
                self._interrupted_stops.append(name)
            tidied = False
            for config in domain.volumes.values():
                volume = self._volume(config)
                listing = volume.listing(scans[config.pool])
                if not volume.needs_attention(listing, domain.running):
                    self._sizes[config.vid] = volume.state(
                        scans[config.pool])['size']
                    continue
                with self._volume_lock(config):
                    volume.tidy()
                    if not domain.running:
                        try:
                            volume.stop()
                        except errors.OwnershipLost as err:
                            LOG.warning('%s', err.message)
                tidied = True
            if tidied:  # a chain record may have followed the disk
                self._save_domain(name)
        # Every volume of these is stopped now: the stop is complete.
        for name in self._interrupted_stops:
            LOG.warning('domain %s: finished a stop that was interrupted',
                        name)
            self.store.mark_stopped(name)
        self._interrupted_stops = []

    def _stop_was_cut_short(self, domain, scans):
        """A running domain with a volume whose working copy is gone: only
        a stop removes one, so a stop was under way when the service died
        (its 'stopping' mark may not have reached the disk: marks are not
        flushed, see state.py)."""
        volumes = [self._volume(c) for c in domain.volumes.values()]
        return any(v.lacks_working_copy(v.listing(scans[v.config.pool]))
                   for v in volumes)

    # -- lookups -----------------------------------------------------------

    def _pool(self, name):
        validation.name(name, 'pool')
        try:
            return self.pools[name]
        except KeyError:
            raise errors.PoolNotFound(f'no pool named {name}') from None

    def _config(self, address):
        domain, name = parse_address(address)
        try:
            return self.domains[domain].volumes[name]
        except KeyError:
            raise errors.VolumeNotFound(f'no volume {address}') from None

    def _volume(self, config):
        return self._pool(config.pool).volume(config)

    @contextlib.contextmanager
    def _volume_lock(self, config):
        with self._volume_locks[config.vid]:
            try:
                yield
            finally:
                for changed in [config] + self._dependents(config):
                    self._epochs[changed.vid] += 1
                    self._sizes.pop(changed.vid, None)

    def _running(self, config):
        domain = self.domains.get(config.domain)
        return bool(domain and domain.running)

    def _dependents(self, config):
        return list(self._snapshots.get(config.vid, ()))

    # -- size limits -------------------------------------------------------

    def size_limit(self, pool_name):
        """The largest size a volume of the pool may be made: the smaller
        of the pool's max_volume_size option and the policy's limit; with a
        description of where it comes from."""
        limit = self._pool(pool_name).options['max_volume_size']
        source = f'pool {pool_name} option max_volume_size'
        extra = self.size_limits(pool_name) if self.size_limits else None
        if extra is not None and extra < limit:
            limit, source = extra, f'policy max_volume_size of pool ' \
                f'{pool_name}'
        return limit, source

    @staticmethod
    def _revisions_to_keep(pool, value):
        value = validation.revisions_to_keep(value)
        if value == -1 and not pool.capabilities.in_place:
            raise errors.NotSupported(
                f'pool {pool.name} ({pool.driver}) has no volumes the VM '
                f'writes in place: revisions_to_keep=-1 is not supported')
        return value

    def _check_size(self, pool_name, size, current, what, cap=None):
        """Refuse (InvalidArgument) to make a volume larger than its pool's
        limit, or than ``cap`` if that is smaller; a size no larger than
        the volume's ``current`` one is always allowed (shrinking, or
        keeping a size a lowered limit no longer admits). Returns the
        bound that applies and where it comes from."""
        limit, source = self.size_limit(pool_name)
        if cap is not None and cap < limit:
            limit, source = cap, 'the caller\'s limit'
        if size > limit and size > current:
            raise errors.InvalidArgument(
                f'{what}: {size} bytes exceeds the limit of {limit} bytes '
                f'({source})')
        return max(limit, current), source

    # -- pools -------------------------------------------------------------

    def list_drivers(self):
        return [dict(drivers.load(name).describe(), driver=name)
                for name in drivers.available()]

    def list_pools(self):
        with self._lock:
            return [{'name': p.name, 'driver': p.driver}
                    for p in sorted(self.pools.values(),
                                    key=lambda p: p.name)]

    def add_pool(self, name, driver, options):
        """``options``: (key, value) pairs; a key given twice is an error."""
        validation.name(name, 'pool')
        seen = {}
        for key, value in options:
            if key in seen:
                raise errors.InvalidArgument(f'option {key} given twice')
            seen[key] = value
        pool = drivers.load(driver)(name, seen)
        with self._lock:
            if name in self.pools:
                raise errors.InvalidArgument(f'pool {name} already exists')
            self._check_no_overlap(pool)
            pool.setup()
            self.pools[name] = pool
            self._save_pools()
            if hasattr(pool, 'shared_volumes'):
                self._adopt_shared(pool)
        return self.pool_info(name)

    def _adopt_shared(self, pool):
        """Record the volumes a shared pool (rbd) holds that this service
        does not know yet, and forget recorded ones the pool no longer has
        (removed by another host), unless running here."""
        found = {f'{v["domain"]}/{v["name"]}': v
                 for v in pool.shared_volumes()}
        changed = set()
        with self._lock:
            for vid in sorted(self._recorded_vids(pool.name) - set(found)):
                domain_name, name = vid.split('/')
                domain = self.domains[domain_name]
                if domain.running:
                    continue
                config = domain.volumes.pop(name)
                if config.source is not None:
                    self._snapshots[config.source.vid].remove(config)
                if not domain.volumes:
                    del self.domains[domain_name]
                changed.add(domain_name)
            # Sources first, so a snapshot volume finds its source.
            for vid, v in sorted(found.items(),
                                 key=lambda item: bool(item[1]['source'])):
                domain = self.domains.get(v['domain'])
                if domain and v['name'] in domain.volumes:
                    continue
                source = None
                if v['source']:
                    try:
                        source = self._config(v['source'])
                    except errors.VolumeNotFound:
                        continue
                config = base.VolumeConfig(
                    domain=v['domain'], name=v['name'], pool=pool.name,
                    kind=v['kind'], size=v['size'], rw=v['rw'],
                    revisions_to_keep=v['revisions_to_keep'], source=source)
                self.domains.setdefault(v['domain'], Domain()).volumes[
                    v['name']] = config
                if source is not None:
                    self._snapshots[source.vid].append(config)
                changed.add(v['domain'])
            for domain_name in sorted(changed):
                self._save_domain(domain_name)

    def _adopt_all_shared(self):
        for pool in list(self.pools.values()):
            if hasattr(pool, 'shared_volumes'):
                self._adopt_shared(pool)

    def release_volume(self, address, force=False):
        """Free a shared volume another host owns and cannot give back
        (it died): fence that host, so it never writes the volume again,
        and break its ownership. Only with ``force``: a live owner loses
        the volume under its VM."""
        config = self._config(address)
        pool = self._pool(config.pool)
        if not hasattr(pool, 'fence'):
            raise errors.NotSupported(f'pool {config.pool} (driver '
                                      f'{pool.driver}) has no owners to '
                                      f'release')
        if not force:
            raise errors.InvalidArgument(
                f'releasing {address} fences its owner; use --force')
        if self._running(config):
            raise errors.VolumeBusy(f'{address} runs on this host; stop '
                                    f'its domain instead')
        with self._volume_lock(config):
            owner = pool.fence(config)
        return {'volume': address, 'fenced': owner}

    def _check_no_overlap(self, pool):
        """A pool's directory may not be another pool's, lie inside one
        (a volume's directory included) or contain one: each pool owns
        everything below its directory. Nor may two pools claim the same
        storage (an LVM thin pool)."""
        claims = getattr(pool, 'claims', set)()
        for other in sorted(self.pools.values(), key=lambda p: p.name):
            shared = claims & getattr(other, 'claims', set)()
            if shared:
                raise errors.InvalidArgument(
                    f'pool {pool.name}: {", ".join(sorted(shared))} is used '
                    f'by pool {other.name} already')
        new = pool.options.get('dir_path')
        if not new:
            return
        for other in sorted(self.pools.values(), key=lambda p: p.name):
            old = other.options.get('dir_path')
            if not old:
                continue
            if new == old:
                why = 'is the directory of'
            elif new.startswith(old + '/'):
                why = 'lies inside the directory of'
            elif old.startswith(new + '/'):
                why = 'contains the directory of'
            else:
                continue
            raise errors.InvalidArgument(
                f'pool {pool.name}: dir_path {new} {why} pool {other.name} '
                f'({old}); pools may not overlap')

    def _recorded_vids(self, pool_name):
        return {c.vid for d in self.domains.values()
                for c in d.volumes.values() if c.pool == pool_name}

    def _orphan_pool(self, name):
        pool = self._pool(name)
        if not hasattr(pool, 'orphans'):
            raise errors.NotSupported(f'pool {name} (driver {pool.driver}) '
                                      f'has no directory to scan')
        return pool

    def _orphans(self, name):
        pool = self._orphan_pool(name)
        others = [p.options['dir_path'] for p in self.pools.values()
                  if p is not pool and p.options.get('dir_path')]
        return pool, pool.orphans(self._recorded_vids(name), others)

    def pool_orphans(self, name):
        """Files and directories in a directory pool that no recorded
        volume owns: [{path, type, size}], paths relative to the pool."""
        with self._lock:
            return self._orphans(name)[1]

    def all_orphans(self):
        """{pool: orphans} for every directory pool that has some."""
        with self._lock:
            found = {}
            for name, pool in sorted(self.pools.items()):
                if hasattr(pool, 'orphans'):
                    orphans = self._orphans(name)[1]
                    if orphans:
                        found[name] = orphans
            return found

    def remove_orphans(self, name, paths=None):
        """Delete the named orphans (all of them when ``paths`` is None),
        each of which must be in the pool's current orphan list; all are
        checked before anything is deleted."""
        with self._lock:
            pool, orphans = self._orphans(name)
            by_path = {o['path']: o for o in orphans}
            if paths is None:
                chosen = orphans
            else:
                if type(paths) not in (list, tuple) or not all(
                        type(p) is str for p in paths):
                    raise errors.InvalidArgument('paths must be a list of '
                                                 'strings')
                unknown = [p for p in paths if p not in by_path]
                if unknown:
                    raise errors.InvalidArgument(
                        f'pool {name}: not orphans: {", ".join(unknown)}')
                chosen = [by_path[p] for p in dict.fromkeys(paths)]
            removed = pool.remove_orphans(chosen)
            for path in removed:
                LOG.info('pool %s: removed orphan %s', name, path)
            return [{'path': p, 'removed': True} for p in removed]

    def adopt_orphan(self, name, address):
        """Record an orphan volume directory DOMAIN/VOLUME of a pool as
        the persistent volume DOMAIN:VOLUME (size from its committed
        image; the pool's revisions_to_keep)."""
        domain_name, volume_name = parse_address(address)
        with self._lock:
            pool, orphans = self._orphans(name)
            vid = f'{domain_name}/{volume_name}'
            orphan_dirs = {o['path'] for o in orphans if o['type'] == 'dir'}
            if vid not in orphan_dirs and domain_name not in orphan_dirs:
                raise errors.InvalidArgument(
                    f'pool {name} has no orphan directory {vid}')
            if pool.capabilities.chains:
                raise errors.NotSupported(
                    f'pool {name} keeps backing chains, which adoption does '
                    f'not rebuild yet')
            domain = self.domains.get(domain_name)
            if domain and domain.running:
                raise errors.VolumeBusy(f'domain {domain_name} is running')
            config = base.VolumeConfig(
                domain=domain_name, name=volume_name, pool=name,
                kind='persistent',
                revisions_to_keep=pool.options['revisions_to_keep'])
            volume = self._volume(config)
            listing = volume.listing()
            if listing.current is None or listing.unknown:
                raise errors.InvalidArgument(
                    f'pool {name}: {vid} is not a volume directory (it '
                    f'needs a committed image and only volsep\'s file '
                    f'names)')
            with self._volume_lock(config):
                volume.tidy()
                volume.stop()
                config.size = volume.state()['size']
                self.domains.setdefault(domain_name, Domain()).volumes[
                    volume_name] = config
                self._save_domain(domain_name)
        LOG.info('pool %s: adopted %s as %s', name, vid, address)
        return self.volume_info(address)

    def set_default_pool(self, name):
        with self._lock:
            self._pool(name)
            self.default_pool = name
            self._save_pools()

    def remove_pool(self, name):
        with self._lock:
            pool = self._pool(name)
            users = [c.address for d in self.domains.values()
                     for c in d.volumes.values() if c.pool == name]
            if users:
                raise errors.PoolInUse(f'pool {name} is used by '
                                       f'{", ".join(sorted(users))}')
            if name == self.default_pool:
                raise errors.PoolInUse(f'pool {name} is the default pool')
            pool.destroy()
            del self.pools[name]
            self._save_pools()

    def set_pool(self, name, options):
        with self._lock:
            pool = self._pool(name)
            given = dict(self._option_strings(pool))
            for key, value in options:
                if key not in ('revisions_to_keep', 'max_volume_size'):
                    raise errors.InvalidArgument(
                        f'option {key} cannot be changed on an existing pool')
                given[key] = value
            pool.options = pool.parse_options(given)
            self._save_pools()
            return self.pool_info(name)

    def pool_info(self, name):
        with self._lock:
            pool = self._pool(name)
            usage = pool.usage()
            dir_path = pool.options.get('dir_path')
            included_in = None
            for other in self.pools.values():
                other_dir = other.options.get('dir_path')
                if (other is not pool and dir_path and other_dir and
                        dir_path.startswith(other_dir.rstrip('/') + '/')):
                    included_in = other.name
            # A thin pool also tells how full its data and metadata are.
            extra = {k: usage[k] for k in ('data_percent',
                                           'metadata_percent') if k in usage}
            return dict(self._option_strings(pool), name=name,
                        driver=pool.driver, size=usage['size'],
                        usage=usage['size'] - usage['free'],
                        included_in=included_in,
                        copy_method=pool.copy_method(), **extra)

    def pools_copying_fully(self):
        """Names of the file-reflink pools that fall back to full copies
        (their filesystem cannot share extents)."""
        with self._lock:
            pools = [p for p in self.pools.values()
                     if p.driver == 'file-reflink']
        return [p.name for p in pools if p.copy_method() == 'copy']

    # -- volumes -----------------------------------------------------------

    def create_volume(self, address, pool, size=0, kind='persistent',
                      source=None, revisions_to_keep=None, rw=True,
                      fmt=None):
        domain_name, name = parse_address(address)
        if kind not in base.KINDS:
            raise errors.InvalidArgument(f'unknown volume kind {kind!r}')
        with self._lock:
            pool_obj = self._pool(pool)
            if kind not in pool_obj.capabilities.kinds:
                raise errors.NotSupported(f'pool {pool} has no {kind} '
                                          f'volumes')
            domain = self.domains.get(domain_name)
            if domain and name in domain.volumes:
                raise errors.InvalidArgument(f'volume {address} exists')
            if domain and domain.running:
                raise errors.VolumeBusy(f'domain {domain_name} is running')
            source_config = None
            if kind == 'snapshot':
                if source is None:
                    raise errors.InvalidArgument(
                        'a snapshot volume needs a source')
                source_config = self._config(source)
                if source_config.pool != pool:
                    raise errors.InvalidArgument(
                        f'source {source} is in pool {source_config.pool}, '
                        f'not {pool}')
                if source_config.kind != 'persistent':
                    raise errors.InvalidArgument(
                        f'source {source} is not a persistent volume')
                # The snapshot is a new volume of the source's size.
                self._check_size(
                    pool, self._volume(source_config).state()['size'], 0,
                    f'snapshot {address} of {source}')
                size = 0
            elif source is not None:
                raise errors.InvalidArgument(
                    'only snapshot volumes have a source')
            else:
                size = validation.size(size)
                self._check_size(pool, size, 0, f'creating {address}')
            if revisions_to_keep is None:
                revisions_to_keep = pool_obj.options['revisions_to_keep']
            formats = pool_obj.capabilities.volume_formats
            fmt = formats[-1] if fmt is None else fmt
            if fmt not in formats:
                raise errors.InvalidArgument(
                    f'pool {pool} stores volumes as {", ".join(formats)}, '
                    f'not {fmt!r}')
            config = base.VolumeConfig(
                domain=domain_name, name=name, pool=pool, kind=kind,
                size=size, rw=validation.boolean(rw, 'rw'),
                revisions_to_keep=self._revisions_to_keep(
                    pool_obj, revisions_to_keep),
                source=source_config, format=fmt)
            with self._volume_lock(config):
                self._volume(config).create()
                self.domains.setdefault(domain_name, Domain()).volumes[
                    name] = config
                if source_config is not None:
                    self._snapshots[source_config.vid].append(config)
                self._save_domain(domain_name)
        return self.volume_info(address)

    def remove_volume(self, address):
        """All or nothing: the driver refuses (changing nothing) or sets
        the volume's storage aside in one step; the record drops the
        volume, and only then is the storage deleted."""
        with self._lock:
            config = self._config(address)
            if self._running(config):
                raise errors.VolumeBusy(f'domain {config.domain} is running')
            dependents = self._dependents(config)
            if dependents:
                raise errors.VolumeBusy(
                    f'{address} is the source of '
                    f'{", ".join(c.address for c in dependents)}')
            with self._volume_lock(config):
                removal = self._volume(config).remove()
                domain = self.domains[config.domain]
                del domain.volumes[config.name]
                if not domain.volumes:
                    del self.domains[config.domain]
                try:
                    self._save_domain(config.domain)
                except BaseException:
                    self.domains.setdefault(config.domain, domain).volumes[
                        config.name] = config
                    if removal is not None:
                        removal.undo()
                    raise
                if config.source is not None:
                    self._snapshots[config.source.vid].remove(config)
                pending = self._importing.pop(config.vid, None)
                if pending is not None:
                    self._release(pending.pool, pending.reserved)
                if removal is not None:
                    try:
                        removal.finish()
                    except Exception as err:  # the record is right already
                        LOG.warning('%s: removed, but its files were not '
                                    'all deleted (%s); the next start '
                                    'deletes them', address, err)

    def volume_info(self, address):
        config = self._config(address)
        disk = self._volume(config).state()
        running = self._running(config)
        return {
            'domain': config.domain, 'name': config.name,
            'pool': config.pool, 'vid': config.vid, 'kind': config.kind,
            'snap_on_start': config.kind == 'snapshot',
            'save_on_stop': config.kind == 'persistent',
            'source': config.source.address if config.source else None,
            'size': disk['size'], 'usage': disk['usage'], 'rw': config.rw,
            'revisions_to_keep': config.revisions_to_keep,
            'is_outdated': disk['is_outdated'] and running,
            'is_dirty': disk['is_dirty'], 'running': running,
            'format': disk.get('format', config.format),
            'path': disk['path'],
            'import_pending': config.vid in self._importing,
            'owner': disk.get('owner'),
            'damaged': disk.get('damaged'),
        }

    def domain_volumes(self, name):
        """(address, kind) of a domain's volumes, from memory alone: for
        events, which must never wait on the disk or the root side."""
        domain = self.domains.get(name)
        return [(c.address, c.kind) for c in
                (domain.volumes.values() if domain else ())]

    def list_volumes(self, pool=None, domains=()):
        self._adopt_all_shared()
        with self._lock:
            configs = [c for name, d in sorted(self.domains.items())
                       if not domains or name in domains
                       for c in d.volumes.values()
                       if pool is None or c.pool == pool]
        sizes = {c.vid: self._sizes.get(c.vid) for c in configs}
        missing = [c for c in configs if sizes[c.vid] is None]
        epochs = {c.vid: self._epochs[c.vid] for c in missing}
        # A few volumes are read one by one, many with one scan per pool.
        scans = {name: self._pool(name).listings()
                 for name in {c.pool for c in missing}} \
            if len(missing) > 32 else {}
        for c in missing:
            sizes[c.vid] = self._volume(c).state(scans.get(c.pool))['size']
            if self._epochs[c.vid] == epochs[c.vid]:  # unchanged meanwhile
                self._sizes[c.vid] = sizes[c.vid]
        return [{'domain': c.domain, 'name': c.name, 'pool': c.pool,
                 'vid': c.vid, 'kind': c.kind,
                 'size': sizes[c.vid]} for c in configs]

    def set_volume(self, address, prop, value):
        config = self._config(address)
        with self._volume_lock(config):
            if prop == 'rw':
                if self._running(config):
                    raise errors.VolumeBusy(f'domain {config.domain} is '
                                            f'running')
                config.rw = validation.boolean(value, 'rw')
            elif prop == 'revisions_to_keep':
                value = self._revisions_to_keep(self._pool(config.pool),
                                                value)
                switching = -1 in (value, config.revisions_to_keep) and \
                    value != config.revisions_to_keep
                busy = [config] + self._dependents(config)
                if switching and any(self._running(c) for c in busy):
                    raise errors.VolumeBusy(
                        f'cannot switch {address} to or from '
                        f'revisions_to_keep=-1 while it or a snapshot of it '
                        f'is running')
                if value == -1 and config.vid in self._direct_exports:
                    # Then a start would let the VM write the image the
                    # export is reading.
                    raise errors.VolumeBusy(
                        f'cannot switch {address} to revisions_to_keep=-1 '
                        f'while it is being exported')
                config.revisions_to_keep = value
                self._volume(config).tidy(
                    keep_import=config.vid in self._importing)
            else:
                raise errors.InvalidArgument(
                    f'property {prop!r} cannot be set; use rw or '
                    f'revisions_to_keep')
            self._save_domain(config.domain)
        return self.volume_info(address)

    def resize(self, address, size, force=False):
        config = self._config(address)
        size = validation.size(size)
        with self._volume_lock(config):
            if config.kind == 'snapshot':
                raise errors.InvalidArgument(
                    f'{address} is a snapshot: its size follows its source')
            if not config.rw:
                raise errors.InvalidArgument(f'{address} is read-only')
            volume = self._volume(config)
            current = volume.state()['size']
            self._check_size(config.pool, size, current,
                             f'resizing {address}')
            running = self._running(config)
            if size < current and not force:
                raise errors.InvalidArgument(
                    f'shrinking {address} from {current} to {size} bytes '
                    f'loses data; use --force')
            if size < current and running:
                raise errors.VolumeBusy(f'{address} cannot shrink while '
                                        f'running')
            if config.vid in self._importing:
                raise errors.VolumeBusy(f'{address} has an import pending')
            volume.resize(size, allow_shrink=size < current, running=running)
            if config.kind == 'volatile':
                config.size = size
            self._save_domain(config.domain)  # a chain may have grown
        return self.volume_info(address)

    def revisions(self, address):
        config = self._config(address)
        return self._volume(config).revisions()

    def revert(self, address, revision=None):
        config = self._config(address)
        if revision is not None:
            if type(revision) is str and revision.isdigit() and \
                    len(revision) <= 18:
                revision = int(revision)
            if type(revision) is not int or revision < 0:
                raise errors.InvalidArgument(
                    f'revision must be a whole number, not {revision!r}')
        with self._volume_lock(config):
            self._check_stopped_persistent(config, 'revert')
            volume = self._volume(config)
            if self._pool(config.pool).capabilities.revert:
                # The restored revision's size may exceed a limit lowered
                # since it was made.
                found = volume.revisions()
                target = found[-1:] if revision is None else \
                    [r for r in found if r['id'] == revision]
                if target:
                    self._check_size(
                        config.pool, target[0]['size'],
                        volume.state()['size'],
                        f'reverting {address} to revision {target[0]["id"]}')
            volume.revert(revision)
            self._save_domain(config.domain)  # a chain may have grown
        return self.volume_info(address)

    def _check_stopped_persistent(self, config, what):
        if config.kind != 'persistent':
            raise errors.InvalidArgument(
                f'cannot {what} {config.address}: it is {config.kind}')
        if self._running(config):
            raise errors.VolumeBusy(f'cannot {what} {config.address}: domain '
                                    f'{config.domain} is running')
        if config.vid in self._importing:
            raise errors.VolumeBusy(f'cannot {what} {config.address}: an '
                                    f'import is pending')

    # -- import, export, clone, clear -------------------------------------

    def import_begin(self, address, size, fmt='raw', max_size=None,
                     force=False):
        """Start an import of ``size`` stream bytes in ``fmt``; returns the
        file the stream goes into. A raw stream becomes the volume as it
        is; any other format is inspected as it arrives (import_inspect)
        and converted at import_end. The volume (for raw, the stream) may
        not exceed ``max_size`` nor the pool's limit (size_limit). An import
        that would make the volume smaller is refused unless ``force``
        (as resize is): for raw here, for other formats as soon as the
        image's virtual size is known."""
        config = self._config(address)
        pool = self._pool(config.pool)
        formats = pool.capabilities.import_formats
        if fmt not in formats:
            raise errors.InvalidArgument(
                f'pool {config.pool} imports {", ".join(formats)}, not '
                f'{fmt!r}')
        size = validation.size(size)
        with self._volume_lock(config):
            self._check_stopped_persistent(config, 'import into')
            volume = self._volume(config)
            current = volume.state()['size']
            # A raw stream is the volume; a non-raw image's virtual size
            # is checked from its headers and again by qemu-img (import_end).
            bound, source = self._check_size(
                config.pool, size if fmt == 'raw' else 0,
                current, f'importing into {address}', cap=max_size)
            if fmt == 'raw':
                self._check_shrink(address, current, size, force)
            check = None if fmt == 'raw' else images.ImageCheck(fmt, bound)
            self._reserve(config.pool, size)
            try:
                path = volume.import_begin(size, fmt)
            except BaseException:
                self._release(config.pool, size)
                raise
            self._importing[config.vid] = _PendingImport(
                fmt, check, path=path, max_size=bound,
                limit_text=f'the limit of {bound} bytes for {address} '
                f'({source})', pool=config.pool, reserved=size,
                current=current, force=bool(force))
            return path

    @staticmethod
    def _check_shrink(address, current, size, force):
        if size < current and not force:
            raise errors.InvalidArgument(
                f'importing {size} bytes into {address} would shrink it from '
                f'{current} bytes and lose data; use --force')

    def _reserve(self, pool, size):
        """Space for a stream of ``size`` bytes, next to what the imports
        in progress into the same pool will still write: refused at once
        when they cannot all fit, not after gigabytes."""
        free = self._pool(pool).usage()['free']
        with self._lock:
            others = self._reserved[pool]
            if size > free - others:
                raise errors.StorageError(
                    f'pool {pool}: no space for {size} bytes: {free} free, '
                    f'{others} of them reserved by imports in progress')
            self._reserved[pool] += size

    def _release(self, pool, size):
        with self._lock:
            self._reserved[pool] -= size

    def _pending_import(self, config):
        pending = self._importing.get(config.vid)
        if pending is None:
            raise errors.InvalidArgument(f'{config.address} has no import '
                                         f'pending')
        return pending

    def import_inspect(self, address, chunk):
        """Show the next chunk of the stream, in order, to the import's
        image check; raises UnsafeImage as soon as the headers decide.
        Returns whether the check wants more chunks."""
        pending = self._pending_import(self._config(address))
        if pending.check is None or pending.inspected:
            return False
        pending.check.feed(chunk)
        if pending.check.settled:
            inspection = pending.check.verdict()
            self._check_shrink(address, pending.current,
                               inspection.virtual_size, pending.force)
            pending.inspected = True
        return not pending.inspected

    def import_write(self, address, offset, data):
        """One chunk of a pending import (no lock: chunks of one stream
        arrive in order from one connection)."""
        config = self._config(address)
        pending = self._pending_import(config)
        return self._volume(config).import_write(offset, data, pending.fmt)

    def takes_descriptors(self, address):
        """Whether an import or export of ``address`` can take the
        caller's descriptor instead of a byte stream."""
        return self._pool(self._config(address).pool).takes_descriptors()

    def import_descriptor(self, address, fd, source_offset, stall_timeout):
        """All of a pending import, copied by the root side from the
        caller's descriptor ``fd`` (no lock, as import_write). A non-raw
        image is then checked where it lies, by the root side's inspection
        before qemu-img opens it (import_end), instead of as it streams."""
        config = self._config(address)
        pending = self._pending_import(config)
        pending.handed_over = True
        return self._volume(config).import_descriptor(
            fd, pending.reserved, source_offset, stall_timeout, pending.fmt)

    def import_end(self, address, success=True):
        config = self._config(address)
        with self._volume_lock(config):
            pending = self._pending_import(config)
            volume = self._volume(config)
            try:
                if success and pending.check is not None:
                    if not pending.handed_over:
                        pending.check.conclude()
                    self._check_shrink(address, pending.current,
                                       self._check_virtual_size(pending),
                                       pending.force)
                volume.import_end(bool(success), pending.fmt)
            except Exception:
                if success:
                    volume.import_end(False, pending.fmt)
                raise
            finally:
                self._importing.pop(config.vid, None)
                self._release(pending.pool, pending.reserved)
            self._save_domain(config.domain)  # a chain may have grown
        return self.volume_info(address)

    @staticmethod
    def _check_virtual_size(pending):
        """The header check reads the virtual size as format_inspector
        does; qemu-img, which does the conversion, may read another (a VHD
        footer's CHS geometry instead of its size field). What qemu-img
        reads is what the volume becomes, so that is what must fit."""
        virtual = qemu.info(pending.path, pending.fmt).get('virtual-size')
        if type(virtual) is not int or virtual < 0:
            raise errors.UnsafeImage(f'qemu-img reports no virtual size for '
                                     f'the {pending.fmt} image')
        if virtual > pending.max_size:
            raise errors.UnsafeImage(
                f'qemu-img reads a virtual size of {virtual} bytes from the '
                f'{pending.fmt} image, which exceeds {pending.limit_text}')
        return virtual

    def _check_exportable(self, config, fmt):
        """Refuse an export that cannot be made (the volume locked)."""
        formats = self._pool(config.pool).capabilities.export_formats
        if fmt not in formats:
            raise errors.InvalidArgument(
                f'pool {config.pool} exports {", ".join(formats)}, not '
                f'{fmt!r}')
        if config.kind != 'persistent':
            raise errors.InvalidArgument(
                f'cannot export {config.address}: it is {config.kind}')
        if config.revisions_to_keep == -1 and self._running(config):
            # The VM writes the committed image itself: no copy of the
            # data from before the start exists to export.
            raise errors.VolumeBusy(
                f'{config.address} is running with revisions_to_keep=-1: '
                f'its committed image is being written')

    def export_begin(self, address, fmt='raw'):
        config = self._config(address)
        with self._volume_lock(config):
            self._check_exportable(config, fmt)
            return self._volume(config).export_begin(fmt)

    def direct_export_begin(self, address, fmt='raw'):
        """The size of the export of ``address`` that export_direct writes
        straight from the committed image into a descriptor, or None
        (then export_begin makes the export a snapshot). With a size
        comes the volume's id, which direct_export_end must be given."""
        config = self._config(address)
        with self._volume_lock(config):
            self._check_exportable(config, fmt)
            size = None if fmt != 'raw' else \
                self._volume(config).direct_export_size()
            if size is None:
                return None
            with self._lock:
                self._direct_exports[config.vid] += 1
            return {'size': size, 'vid': config.vid}

    def export_direct(self, address, size, fd, stall_timeout):
        """The export direct_export_begin announced, into ``fd``. Not
        locked: it lasts as long as its reader, and the commits it may
        meet never change the image it reads (see export_committed)."""
        return self._volume(self._config(address)).export_committed(
            fd, size, stall_timeout)

    def direct_export_end(self, vid):
        # By id: the volume may have been removed meanwhile.
        with self._lock:
            self._direct_exports[vid] -= 1
            if not self._direct_exports[vid]:
                del self._direct_exports[vid]

    def export_read(self, address, path, offset, length):
        return self._volume(self._config(address)).export_read(
            path, offset, length)

    def export_descriptor(self, address, path, fd, stall_timeout):
        return self._volume(self._config(address)).export_descriptor(
            path, fd, stall_timeout)

    def export_end(self, address, path):
        config = self._config(address)
        with self._volume_lock(config):
            self._volume(config).export_end(path)

    def clone(self, source_address, target_address):
        source = self._config(source_address)
        target = self._config(target_address)
        if source is target:
            raise errors.InvalidArgument('a volume cannot be cloned into '
                                         'itself')
        if source.kind != 'persistent':
            raise errors.InvalidArgument(f'{source_address} is not '
                                         f'persistent')
        if source.revisions_to_keep == -1 and self._running(source):
            raise errors.VolumeBusy(
                f'{source_address} is running with revisions_to_keep=-1: '
                f'its committed image is being written')
        # Locks in a fixed order, so two opposite clones cannot deadlock.
        first, second = sorted((source, target), key=lambda c: c.vid)
        with self._volume_lock(first), self._volume_lock(second):
            self._check_stopped_persistent(target, 'clone into')
            target_volume = self._volume(target)
            # The target takes the source's size.
            self._check_size(target.pool,
                             self._volume(source).state()['size'],
                             target_volume.state()['size'],
                             f'cloning {source_address} into '
                             f'{target_address}')
            target_volume.import_from(self._volume(source))
            self._save_domain(target.domain)  # a chain may have grown
        return self.volume_info(target_address)

    def clear(self, address):
        config = self._config(address)
        with self._volume_lock(config):
            self._check_stopped_persistent(config, 'clear')
            self._volume(config).clear()
        return self.volume_info(address)

    # -- domains -----------------------------------------------------------

    def _domain(self, name):
        validation.name(name, 'domain')
        try:
            return self.domains[name]
        except KeyError:
            raise errors.VolumeNotFound(f'domain {name} has no volumes') \
                from None

    def _all(self, configs, action):
        """Run action on every volume in parallel; wait for all; raise the
        first error (in volume order); return results in that order."""
        if len(configs) < 2:  # no thread for a lone volume
            return [action(c) for c in configs]
        futures = [self._volume_workers.submit(action, c) for c in configs]
        concurrent.futures.wait(futures)
        for future in futures:
            if future.exception() is not None:
                raise future.exception()
        return [f.result() for f in futures]

    def start_domain(self, name):
        with self._domain_locks[name]:
            return self._start_domain(name)

    def _start_domain(self, name):
        domain = self._domain(name)
        if domain.running:
            raise errors.VolumeBusy(f'domain {name} is already running')
        configs = list(domain.volumes.values())
        for config in configs:
            self._check_startable(config)
        # Verify everything before starting anything. What a check read
        # is handed to the start while no lock holder has changed the
        # volume since (its epoch), saving the start a listing of its own.
        epochs = {c.vid: self._epochs[c.vid] for c in configs}
        verified = {c.vid: self._volume(c).verify(self._recall(c))
                    for c in configs}

        started = []

        def start_one(config):
            with self._volume_lock(config):
                volume = self._volume(config)
                unchanged = self._epochs[config.vid] == epochs[config.vid]
                path = volume.start(verified[config.vid] if unchanged
                                    else None)
                self._remember(config, volume.left)
                started.append(config)
                return {'volume': config.name, 'path': path,
                        'format': volume.attached_format(), 'rw': config.rw}
        try:
            result = self._all(configs, start_one)
            self.store.mark_running(name)
        except Exception:
            self._all(list(started), self._stop_one)
            raise
        domain.running = True   # no document changes: only the mark
        return result

    def _check_startable(self, config):
        if config.vid in self._importing:
            raise errors.VolumeBusy(f'{config.address} has an import pending')
        source = config.source
        if (source is not None and source.revisions_to_keep == -1 and
                self._running(source)):
            raise errors.VolumeBusy(
                f'{config.address}: its source {source.address} is running '
                f'with revisions_to_keep=-1')

    def _stop_one(self, config):
        with self._volume_lock(config):
            volume = self._volume(config)
            volume.stop(self._recall(config))
            self._remember(config, volume.left)

    def _remember(self, config, left):
        """Keep what a start or stop left in the volume (Volume.left) for
        its next one, valid until its lock is released again after this
        holder's release."""
        if left is None:
            self._left.pop(config.vid, None)
        else:
            self._left[config.vid] = (self._epochs[config.vid] + 1, left)

    def _recall(self, config):
        """What the last start or stop left, if no lock holder has changed
        the volume since; None otherwise."""
        epoch, left = self._left.pop(config.vid, (None, None))
        return left if epoch == self._epochs[config.vid] else None

    def stop_domain(self, name):
        with self._domain_locks[name]:
            self._stop_domain(name)

    def _stop_domain(self, name):
        domain = self._domain(name)
        configs = list(domain.volumes.values())
        if domain.running:
            self.store.mark_stopping(name)
        try:
            self._all(configs, self._stop_one)
        except errors.OwnershipLost:
            # Another host fenced this one: nothing of it was committed,
            # and here the domain is stopped for good.
            self.store.mark_stopped(name)
            domain.running = False
            raise
        self._save_domain(name)   # a chain driver may have added a layer
        self.store.mark_stopped(name)
        domain.running = False

    # -- libvirt XML -------------------------------------------------------

    def disk_xml(self, name, full=False):
        """Each disk of a domain as libvirt <disk> XML with its whole
        backing chain; with ``full``, inside a minimal TCG domain."""
        with self._lock:
            configs = sorted(self._domain(name).volumes.values(),
                             key=lambda c: c.name)
        disks = []
        for index, config in enumerate(configs):
            with self._volume_lock(config):
                volume_chain = self._volume(config).chain()
            if not volume_chain or volume_chain[0][0] is None:
                raise errors.StorageError(
                    f'{config.address} has no image to attach until its '
                    f'domain starts')
            disks.append(libvirt_xml.disk(volume_chain,
                                          libvirt_xml.target_name(index),
                                          read_only=not config.rw))
        if full:
            return libvirt_xml.text(libvirt_xml.domain(name, disks))
        return libvirt_xml.text(*disks)

    def volume_xml(self, address):
        config = self._config(address)
        with self._volume_lock(config):
            volume = self._volume(config)
            disk = volume.state()
            volume_chain = volume.chain()
        if not volume_chain:
            raise errors.StorageError(f'{address} has no image yet')
        return libvirt_xml.text(libvirt_xml.storage_volume(
            config.vid.replace('/', ':'), volume_chain, disk['size'],
            disk['usage']))

    def pool_xml(self, name):
        pool = self._pool(name)
        usage = pool.usage()
        return libvirt_xml.text(libvirt_xml.storage_pool(
            name, pool.options.get('dir_path', ''), usage['size'],
            usage['free']))

    # -- backing chains ----------------------------------------------------

    def _chain_volume(self, address):
        config = self._config(address)
        if not self._pool(config.pool).capabilities.chains:
            raise errors.NotSupported(
                f'{address} is in pool {config.pool}, whose driver keeps no '
                f'backing chains')
        if config.kind != 'persistent':
            raise errors.InvalidArgument(
                f'{address} is {config.kind}: only persistent volumes keep '
                f'a chain')
        return config, self._volume(config)

    def audit_verify(self):
        """The root side's verdict on its own audit log."""
        return root_audit.verify()

    def chain_validate(self, address):
        """The chain a hypervisor gets (while running: the overlay and what
        lies below it, for any kind of volume; else the recorded chain),
        checked layer by layer against the headers; ChainMismatch lists
        every difference."""
        config = self._config(address)
        if not self._pool(config.pool).capabilities.chains:
            raise errors.NotSupported(
                f'{address} is in pool {config.pool}, whose driver keeps no '
                f'backing chains')
        with self._volume_lock(config):
            record = self._volume(config).chain()
            if not record:
                raise errors.InvalidArgument(
                    f'{address} is {config.kind} and not running: it has no '
                    f'chain to validate')
            found = chains.differences(record, root_chain.layer)
        if found:
            raise errors.ChainMismatch(
                f'{address}: the images disagree with the record: ' +
                '; '.join(found))
        return [{'index': i, 'path': path, 'format': fmt}
                for i, (path, fmt) in enumerate(record)]

    def chain_correct(self, address):
        """Rebuild the record from the headers, from the recorded top (or,
        if it is gone, the newest layer) down; all or nothing."""
        config, volume = self._chain_volume(address)
        with self._volume_lock(config):
            self._check_chain_idle(config, 'correct the chain of')
            top = volume.newest_layer()
            record = chains.walk(top[0], top[1], root_chain.layer,
                                 volume.pool.dir_path)
            before = volume.recorded()
            volume.set_record(record)
            self._save_domain(config.domain)
        return {'before': before, 'after': record}

    def _check_chain_idle(self, config, what):
        busy = [c for c in [config] + self._dependents(config)
                if self._running(c)]
        if busy:
            raise errors.VolumeBusy(
                f'cannot {what} {config.address}: '
                f'{", ".join(c.address for c in busy)} running')

    def _merge(self, address, top, base, operation, what):
        config, volume = self._chain_volume(address)
        with self._volume_lock(config):
            self._check_chain_idle(config, what)
            record = volume.recorded()
            volume.set_record(operation(record, top, base))
            self._save_domain(config.domain)
            return volume.recorded()

    def chain_commit(self, address, top, base):
        """Offline block-commit by chain index (0 = top)."""
        return self._merge(address, top, base, root_chain.commit,
                           'commit layers of')

    def chain_pull(self, address, top, base):
        """Offline block-pull by chain index (base = chain length:
        flatten)."""
        return self._merge(address, top, base, root_chain.pull,
                           'pull layers of')
