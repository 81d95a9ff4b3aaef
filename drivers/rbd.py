"""The `rbd` driver: volumes as images in a Ceph pool that several volsep
services (one per host) share.

Each volume has an anchor image holding its configuration (image
metadata, so every host that adds the pool lists the same volumes) and its
owner's lock, and a data image whose snapshots c1, c2, ... are its
committed generations (see privileged/rbd.py for the names). A persistent
volume's head is what the VM writes; stopping it commits the head as the
next generation, and the older ones are its revisions. A volatile volume's
data image exists only while running; a snapshot volume's is a clone of
its source's current generation.

Starting takes the volume for this host (the host_id option): another host
that tries gets VolumeBusy naming the owner. `release --force` fences a
dead owner (blocklists its Ceph client and every client writing the
volume's data image, its hypervisor's) and frees the volume; the fenced
host, when it next commits or stops, finds it no longer owns the volume,
writes nothing and reports the loss (OwnershipLost).
"""

import contextlib
import dataclasses
import logging

from volsep.drivers import base
from volsep.drivers import errors
from volsep.drivers import staging
from volsep.drivers import validation
from volsep.privileged import errors as root_errors
from volsep.privileged import image_formats
from volsep.privileged import qemu
from volsep.privileged import rbd

LOG = logging.getLogger('volsep.drivers.rbd')

# What the anchor's metadata records of a volume, and how to read it back.
_META_FIELDS = ('kind', 'size', 'rw', 'revisions_to_keep', 'source')


def _meta_of(config):
    return {'kind': config.kind, 'size': str(config.size),
            'rw': 'yes' if config.rw else 'no',
            'revisions_to_keep': str(config.revisions_to_keep),
            'source': config.source.address if config.source else '-',
            'import': 'no'}


def _monitors(value):
    hosts = []
    for item in value.split(','):
        host, _, port = item.strip().rpartition(':')
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or \
                not all(c.isalnum() or c in '.-' for c in host):
            raise errors.InvalidArgument(
                f'monitors must be HOST:PORT[,HOST:PORT...], not {value!r}')
        hosts.append([host, int(port)])
    return hosts


def _monitors_option(value):
    _monitors(value)
    return value


def _uuid(value):
    import uuid
    if value == '':
        return value  # no libvirt secret: a cluster without cephx
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise errors.InvalidArgument(f'secret_uuid {value!r} is not a UUID') \
            from None


class RbdVolume(base.Volume):

    @property
    def _args(self):
        return (self.pool.ceph_pool, self.config.domain, self.config.name)

    def listing(self, listings=None):
        if listings is None:
            listings = self.pool.listings(self.config)
        return listings.get(self.config.vid)

    def _data(self, listing):
        return listing['data'] if listing else None

    @staticmethod
    def _current(data):
        """The newest committed generation, or None."""
        return data['snaps'][-1][0] if data and data['snaps'] else None

    def _owned_elsewhere(self, listing):
        owner = listing and listing['owner']
        return owner if owner and owner[0] != self.pool.host_id else None

    def _image(self):
        return f'{self.pool.ceph_pool}/{rbd.data_name(*self._args[1:])}'

    # -- lifecycle ---------------------------------------------------------

    def create(self):
        rbd.create(*self._args, _meta_of(self.config))
        if self.config.kind == 'persistent':
            rbd.create_data(*self._args, self.config.size)
            rbd.commit(*self._args, 1)

    def remove(self):
        owner = self._owned_elsewhere(self.listing())
        if owner:
            raise errors.VolumeBusy(f'{self.config.address} is running on '
                                    f'host {owner[0]}')
        return _Removal(self)

    def verify(self, known=None):
        if self.config.kind == 'persistent':
            if self._current(self._data(self.listing())) is None:
                raise errors.StorageError(
                    f'volume {self.config.address}: no committed image in '
                    f'Ceph pool {self.pool.ceph_pool}')
        elif self.config.kind == 'snapshot':
            self.pool.volume(self.config.source).verify()

    def start(self, verified=None):
        # Never what verify() read: another host may change a stopped
        # volume in between, which no local lock sees.
        self.tidy()
        try:
            rbd.acquire(*self._args, self.pool.host_id)
        except rbd.Owned as err:
            raise errors.VolumeBusy(err.message) from None
        try:
            kind = self.config.kind
            if kind != 'persistent':
                rbd.remove_data(*self._args)
            if kind == 'volatile':
                rbd.create_data(*self._args, self.config.size)
            elif kind == 'snapshot':
                source = self.pool.volume(self.config.source)
                rbd.clone_generation(
                    self.pool.ceph_pool, self.config.source.domain,
                    self.config.source.name,
                    source._current(source._data(source.listing())),
                    self.config.domain, self.config.name)
        except BaseException:
            rbd.release(*self._args, self.pool.host_id)
            raise
        return f'rbd:{self._image()}'

    def stop(self, known=None):
        try:
            self._stop()
        except rbd.OwnershipLost as err:
            raise errors.OwnershipLost(
                f'{self.config.address}: {err.message}; nothing was '
                f'committed') from None

    def _stop(self):
        listing = self.listing()
        if listing is None or listing['owner'] is None:
            return  # not running anywhere: nothing to commit
        owner = self._owned_elsewhere(listing)
        if owner:
            raise errors.OwnershipLost(
                f'{self.config.address}: this host ({self.pool.host_id}) '
                f'no longer owns it (host {owner[0]} does); nothing was '
                f'committed')
        host = self.pool.host_id
        if self.config.kind == 'persistent':
            if self.config.revisions_to_keep >= 0:
                data = self._data(listing)
                rbd.commit(*self._args, self._current(data) + 1, host)
                self._prune()
        else:
            rbd.check_owner(*self._args, host)
            rbd.remove_data(*self._args)
        rbd.release(*self._args, host)

    @staticmethod
    def _revisions(listing):
        """[(generation, size, timestamp, archive)] of every revision,
        oldest first: the data image's generations but its newest, and
        those of the archives (``archive`` None for the data image's)."""
        found = []
        for archive, data in listing['archives'] if listing else ():
            found += [(g, size, ts, archive)
                      for g, size, ts in data.get('snaps', ())]
        data = listing['data'] if listing else None
        found += [(g, size, ts, None)
                  for g, size, ts in (data['snaps'][:-1] if data else ())]
        return sorted(found)

    def _prune(self, listing=None):
        """Drop the oldest revisions beyond revisions_to_keep (the current
        generation is never one of them), and the archives left with none
        or half removed; whether anything went."""
        listing = listing or self.listing()
        keep = max(self.config.revisions_to_keep, 0)
        revisions = self._revisions(listing)
        dropped = revisions[:max(len(revisions) - keep, 0)]
        for generation, _, _, archive in dropped:
            rbd.drop_generation(*self._args, generation, archive)
        kept = {archive for _, _, _, archive in revisions[len(dropped):]}
        emptied = [a for a, _ in listing['archives'] if a not in kept]
        for archive in emptied:
            rbd.remove_archive(*self._args, archive)
        return bool(dropped or emptied)

    def tidy(self, keep_import=False):
        """Finish what a crash interrupted: an instant clone is finished
        once its old image was renamed away, else dropped; an import cut
        short is rolled back to the current generation, extra revisions
        go, a volatile or snapshot data image nobody owns is deleted, and
        the anchor's record follows this configuration."""
        listing = self.listing()
        if listing is None or self._owned_elsewhere(listing):
            return listing   # another host's to finish
        if listing['staged']:
            if listing['data'] is None and not listing['partial']:
                rbd.swap_staged(*self._args)   # swapped in part-way
            else:
                rbd.discard_staged(*self._args)   # never swapped in
            listing = self.listing()
        data = self._data(listing)
        changed = False
        if listing['meta'].get('import') == 'yes' and not keep_import:
            if self._current(data) is not None:
                rbd.rollback(*self._args, self._current(data))
        meta = _meta_of(self.config)
        if keep_import:
            meta['import'] = listing['meta'].get('import', 'no')
        if {k: listing['meta'].get(k, '') for k in meta} != meta:
            rbd.set_meta(*self._args, meta)
            changed = True
        if self.config.kind == 'persistent' and data:
            changed |= self._prune(listing)
        elif (data or listing['partial']) and listing['owner'] is None:
            rbd.remove_data(*self._args)
            changed = True
        # A listing is a scan of the pool: taken again only if needed.
        return self.listing() if changed else listing

    def lacks_working_copy(self, listing):
        """Whether a volume this host recorded as running is stopped in
        fact: another host owns it (it was fenced while this service was
        away), nobody does (a fence, or a stop cut short after it released
        the volume), or its working copy is gone (a stop cut short)."""
        if listing is None or self._owned_elsewhere(listing):
            LOG.warning('%s: this host (%s) lost its ownership (now: %s); '
                        'it is stopped here and nothing was committed',
                        self.config.address, self.pool.host_id,
                        listing and listing['owner'])
            return True
        if listing['owner'] is None:
            LOG.warning('%s: nobody owns it (fenced, or released by a stop '
                        'that was cut short); it is stopped here',
                        self.config.address)
            return True
        return self.config.kind != 'persistent' and listing['data'] is None

    def needs_attention(self, listing, running):
        if listing is None or self._owned_elsewhere(listing):
            return False
        return listing['meta'].get('import') == 'yes' or \
            listing['partial'] or listing['staged'] or (
            not running and listing['owner'] is not None and
            not self._owned_elsewhere(listing))

    # -- revisions ---------------------------------------------------------

    def revisions(self):
        return [{'id': g, 'timestamp': ts, 'size': size}
                for g, size, ts, _ in self._revisions(self.listing())]

    def _check_idle(self, listing, what):
        if listing['owner'] is not None:
            raise errors.VolumeBusy(
                f'cannot {what} {self.config.address}: running on (or '
                f'being changed by) host {listing["owner"][0]}')

    def _take(self, what):
        try:
            rbd.acquire(*self._args, self.pool.host_id)
        except rbd.Owned as err:
            raise errors.VolumeBusy(f'cannot {what} {self.config.address}: '
                                    f'{err.message}') from None

    @contextlib.contextmanager
    def _held(self, what):
        """This host owns the volume while it changes it stopped, as while
        it runs: no other host starts, changes or tidies it meanwhile
        (VolumeBusy), and if this service dies, its restart finishes the
        work (reconcile: tidy, then stop, which commits and releases)."""
        self._take(what)
        try:
            yield
        finally:
            rbd.release(*self._args, self.pool.host_id)

    def revert(self, revision=None):
        listing = self.tidy()
        self._check_idle(listing, 'revert')
        revisions = {g: archive
                     for g, _, _, archive in self._revisions(listing)}
        if not revisions:
            raise errors.RevisionNotFound(
                f'volume {self.config.address} has no revisions')
        target = max(revisions) if revision is None else revision
        if target not in revisions:
            raise errors.RevisionNotFound(
                f'volume {self.config.address} has no revision {revision}')
        # The reverted-to content becomes a new generation: the current one
        # stays as a revision, so the revert can itself be undone.
        if revisions[target] is None:
            self._rewrite_head(listing, lambda: rbd.rollback(
                *self._args, target), 'revert')
            return
        # A revision kept in an archive: cloned from there, as a clone
        # from another volume is.
        self._swap_in(listing, 'revert', self.config, target,
                      revisions[target])

    # -- resize, clear, clone ----------------------------------------------

    def resize(self, size, allow_shrink, running):
        listing = self.listing()
        if self.config.kind != 'persistent':
            if running and self._data(listing):
                rbd.resize_data(*self._args, size, allow_shrink)
            rbd.set_meta(*self._args, {'size': str(size)})
            return
        if running:
            rbd.resize_data(*self._args, size, allow_shrink)
        else:
            self._rewrite_head(listing, lambda: rbd.resize_data(
                *self._args, size, allow_shrink), 'resize')

    def _rewrite_head(self, listing, change, what):
        """Change a stopped volume's head and commit it as the next
        generation, holding the volume (_held). The head is marked as
        being rewritten first, so a crash before the commit is rolled back
        (tidy) and the head never differs from the committed generation
        while stopped."""
        with self._held(what):
            rbd.set_meta(*self._args, {'import': 'yes'})
            change()
            self._commit_head(listing)
            rbd.set_meta(*self._args, {'import': 'no'})

    def _commit_head(self, listing):
        rbd.commit(*self._args, self._current(self._data(listing)) + 1)
        self._prune()

    def clear(self):
        listing = self.listing()
        self._check_idle(listing, 'clear')
        size = self._data(listing)['size']

        def zero():
            rbd.resize_data(*self._args, 0, True)
            rbd.resize_data(*self._args, size)
        self._rewrite_head(listing, zero, 'clear')

    def import_from(self, source):
        """An instant clone: the volume's data image becomes a
        copy-on-write clone of the source's current generation (clone v2),
        staged under another name and swapped in, so that a crash leaves
        the old content or the new (tidy). The image it replaces becomes an
        archive, which keeps the volume's earlier generations as
        revisions; generation ids go on growing. Later changes to the
        source (new generations, revert, import, pruning the cloned one)
        never reach the clone; removing the source flattens it first
        (privileged/rbd.py)."""
        listing = self.tidy()
        self._check_idle(listing, 'clone into')
        if source.pool.driver != self.pool.driver or \
                source.pool.ceph_pool != self.pool.ceph_pool:
            raise errors.NotSupported('rbd clones stay within one Ceph pool')
        generation = source._current(source._data(source.listing()))
        self._swap_in(listing, 'clone into', source.config, generation)

    def _swap_in(self, listing, what, source, generation, archive=None):
        """Make a clone of ``source``'s ``generation`` (kept in its data
        image, or in its archive ``archive``) the next generation."""
        with self._held(what):
            rbd.stage_clone(self.pool.ceph_pool, source.domain, source.name,
                            generation, self.config.domain, self.config.name,
                            self._current(self._data(listing)) + 1, archive)
            rbd.swap_staged(*self._args)
            self._prune()

    # -- import and export ------------------------------------------------
    # Raw streams go straight to and from the data image. Other formats go
    # through the pool's staging_dir (drivers/staging.py): qemu-img,
    # confined by Landlock with TCP scoped out, cannot reach Ceph.

    @property
    def _staged(self):
        return self.pool.staging_area.volume(self.config.domain,
                                             self.config.name)

    def import_begin(self, size, fmt='raw'):
        listing = self.listing()
        self._check_idle(listing, 'import into')
        if listing['meta'].get('import') == 'yes' or \
                self._staged.upload_pending(listing['staging']):
            raise errors.VolumeBusy(f'volume {self.config.address} already '
                                    f'has an import pending')
        if fmt != 'raw':
            return self._staged.begin_import(size, fmt, listing['staging'])
        # Held until import_end (see _held), and marked: a crash from
        # here on is rolled back by tidy.
        self._take('import into')
        try:
            rbd.set_meta(*self._args, {'import': 'yes'})
            rbd.resize_data(*self._args, 0, True)
            rbd.resize_data(*self._args, size)
        except BaseException:
            rbd.release(*self._args, self.pool.host_id)   # tidy rolls back
            raise
        return f'rbd:{self._image()}'

    def import_write(self, offset, data, fmt='raw'):
        if fmt != 'raw':
            return self._staged.write(fmt, offset, data)
        return rbd.write_at(*self._args, offset, data)

    def import_end(self, success, fmt='raw'):
        listing = self.listing()
        if fmt != 'raw':
            def load(raw):
                self._rewrite_head(listing, lambda: rbd.import_file(
                    *self._args, raw), 'import into')
            self._staged.end_import(success, fmt, listing['staging'], load)
            return
        if listing['meta'].get('import') != 'yes':
            raise errors.InvalidArgument(
                f'volume {self.config.address} has no import pending')
        if success:
            rbd.flush(*self._args)
            self._commit_head(listing)
        else:
            rbd.rollback(*self._args, self._current(self._data(listing)))
        rbd.set_meta(*self._args, {'import': 'no'})
        rbd.release(*self._args, self.pool.host_id)

    def export_begin(self, fmt='raw'):
        listing = self.listing()
        data = self._data(listing)
        generation = self._current(data)
        if fmt == 'raw':
            return {'path': f'rbd:{self._image()}@c{generation}',
                    'size': next(s[1] for s in data['snaps']
                                 if s[0] == generation)}
        return self._staged.begin_export(
            fmt, listing['staging'],
            lambda raw: rbd.export_file(*self._args, generation, raw))

    def _export_generation(self, path):
        """The generation a raw export reads, or None for a converted
        export's file; InvalidArgument for anything else."""
        prefix = f'rbd:{self._image()}@c'
        tail = path[len(prefix):] if path.startswith(prefix) else ''
        if tail.isdigit() and len(tail) <= 18:
            return int(tail)
        if self._staged.is_export(path):
            return None
        raise errors.InvalidArgument(f'{path} is not an export of '
                                     f'{self.config.address}')

    def export_read(self, path, offset, length):
        generation = self._export_generation(path)
        if generation is None:
            return self._staged.read(path, offset, length)
        return rbd.read_at(*self._args, generation, offset, length)

    def export_end(self, path):
        if self._export_generation(path) is None:
            self._staged.end_export(path)

    # -- state ---------------------------------------------------------------

    def attached_format(self):
        return 'raw'

    def chain(self):
        source = {'type': 'network', 'protocol': 'rbd',
                  'name': self._image(), 'hosts': self.pool.monitors}
        if self.pool.options['secret_uuid']:
            source['auth'] = {'username': self.pool.options['client_name'],
                              'secret_uuid': self.pool.options['secret_uuid']}
        return [[source, 'raw']]

    def state(self, listings=None):
        listing = self.listing(listings)
        data = self._data(listing)
        kind = self.config.kind
        importing = bool(listing) and listing['meta'].get('import') == 'yes'
        if data:
            size = data['size']
            if importing and data['snaps']:
                # A raw import fills the head: until it ends, the volume
                # is still its last generation.
                size = data['snaps'][-1][1]
        elif kind == 'snapshot':
            source = self.pool.volume(self.config.source)
            source_data = source._data(source.listing(listings))
            size = source_data['size'] if source_data else 0
        else:
            size = self.config.size
        outdated = False
        if kind == 'snapshot' and data and data['parent']:
            source = self.pool.volume(self.config.source)
            current = source._current(source._data(source.listing(listings)))
            outdated = data['parent'][1] != f'c{current}'
        owner = listing['owner'] if listing else None
        return {
            'size': size, 'usage': size if data else 0,
            # Held by this host while it runs, and while an import (of a
            # stopped volume) is pending, which is no dirt.
            'is_dirty': kind == 'persistent' and owner is not None and
            not importing,
            'is_outdated': outdated,
            'path': f'rbd:{self._image()}' if data else None,
            'import_pending': importing,
            'has_working_copy': bool(data) and kind != 'persistent',
            'owner': owner[0] if owner else None,
        }


class _Removal:
    """Removal of an rbd volume: the images go once the record no longer
    lists the volume."""

    def __init__(self, volume):
        self.volume = volume

    def finish(self):
        try:
            rbd.remove(*self.volume._args)
        except root_errors.NotFound:
            pass
        staged = self.volume._staged
        staged.clear(staged.names())

    def undo(self):
        pass


class RbdPool(base.Pool):
    driver = 'rbd'
    volume_class = RbdVolume
    capabilities = dataclasses.replace(
        base.Capabilities(), revert=True, resize_running=True,
        clone_instant=True, import_formats=image_formats.FORMATS,
        export_formats=qemu.OUTPUT_FORMATS,
        # A stop commits nothing then, so exports, snapshots and clones
        # would give the generation from before the VM's writes.
        in_place=False)
    options = dict(
        base.Pool.options,
        ceph_pool=base.Option('Ceph pool (one the root configuration '
                              'allows in ceph_pools)', required=True,
                              parse=lambda v: validation.name(v,
                                                              'ceph_pool')),
        host_id=base.Option('name of this host in the ownership locks; '
                            'unique per host', required=True,
                            parse=lambda v: validation.name(v, 'host_id')),
        monitors=base.Option('HOST:PORT[,...] of the Ceph monitors, for '
                             'the libvirt <disk> a VM attaches',
                             required=True, parse=_monitors_option),
        client_name=base.Option('Ceph client id the hypervisor '
                                'authenticates as (libvirt <auth '
                                'username>)', default='volsep',
                                parse=lambda v: validation.name(
                                    v, 'client_name')),
        secret_uuid=base.Option('UUID of the libvirt secret that holds the '
                                'key of the client (never the key itself)',
                                default='', parse=_uuid),
        staging_dir=staging.option('Ceph images'),
    )

    @property
    def ceph_pool(self):
        return self.options['ceph_pool']

    @property
    def host_id(self):
        return self.options['host_id']

    @property
    def monitors(self):
        return _monitors(self.options['monitors'])

    @property
    def staging_area(self):
        return staging.Area(self.name, self.options['staging_dir'])

    def setup(self):
        rbd.scan(self.ceph_pool)  # the pool is allowed and reachable
        self.staging_area.setup()

    def finish_removals(self, recorded):
        """At start-up nothing is imported or exported yet: whatever the
        staging directories hold was left by an import or export cut
        short (or a removal), and goes. Returns [(action, path)]."""
        return self.staging_area.clear_all()

    def destroy(self):
        pass  # the Ceph pool and its volumes belong to every host

    def listings(self, config=None):
        """rbd.scan's entries (of the volume ``config`` only, if given:
        one volume's operations read nothing of the others), each with
        'staging': the names in the volume's staging directory (None
        without one)."""
        if config is not None:
            found = rbd.scan(self.ceph_pool, config.domain, config.name)
            for entry in found.values():
                entry['staging'] = self.staging_area.volume(
                    config.domain, config.name).names()
            return found
        found = rbd.scan(self.ceph_pool)
        staging = self.staging_area.contents()
        for vid, entry in found.items():
            entry['staging'] = staging.get(vid.replace('/', '+'))
        return found

    def usage(self):
        return rbd.usage(self.ceph_pool)

    def fence(self, config):
        """Fence the host that owns a volume; returns [host, client,
        address] of the fenced owner, or None if nobody owned it."""
        return rbd.fence(self.ceph_pool, config.domain, config.name)

    def shared_volumes(self):
        """Every volume the pool's images record, for every host:
        [{domain, name, kind, size, rw, revisions_to_keep, source}]."""
        found = []
        for vid, entry in sorted(self.listings().items()):
            meta = entry['meta']
            if any(k not in meta for k in _META_FIELDS):
                continue
            domain, name = vid.split('/')
            found.append({'domain': domain, 'name': name,
                          'kind': meta['kind'], 'size': int(meta['size']),
                          'rw': meta['rw'] == 'yes',
                          'revisions_to_keep': int(
                              meta['revisions_to_keep']),
                          'source': None if meta['source'] == '-'
                          else meta['source']})
        return found
