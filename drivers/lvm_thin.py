"""The `lvm_thin` driver: volumes as thin LVs of one LVM thin pool.

A volume's committed generations are thin LVs +c1, +c2, ... (names in
privileged/lvm_names.py); the newest is its content, the older ones its
revisions. Everything that changes the content builds the next generation
as +t (a thin snapshot or a new thin LV) and publishes it with one
lvrename, the commit point; superseded generations beyond
revisions_to_keep are removed afterwards, by the same root call
(lvm.commit). A crash between any two root
calls therefore leaves the old or the new generation, and `tidy` removes
what was left half-built. Generation numbers only grow: the newest is
never removed while the volume exists.

Starting a persistent volume snapshots its current generation as the
working copy +w, which the VM writes; stopping renames +w to the next
generation. A volatile volume's +w is a new empty thin LV; a snapshot
volume's is a thin snapshot of its source's current generation. Exports
read a private snapshot +e, so a commit during the export changes
nothing of it.
"""

import dataclasses

from volsep.drivers import base
from volsep.drivers import errors
from volsep.drivers import lvm_layout
from volsep.drivers import staging
from volsep.privileged import errors as root_errors
from volsep.privileged import files
from volsep.privileged import image_formats
from volsep.privileged import lvm
from volsep.privileged import lvm_names
from volsep.privileged import qemu


class LvmThinVolume(base.Volume):

    def _lv(self, suffix, config=None):
        config = config or self.config
        return lvm_names.lv_address(self.pool.vg, self.pool.thin_pool,
                                    config.domain, config.name, suffix)

    def _generation_lv(self, generation, config=None):
        return self._lv(lvm_names.generation_suffix(generation), config)

    def device(self, suffix):
        lv = lvm_names.lv_name(self.config.domain, self.config.name, suffix)
        return f'/dev/{self.pool.vg}/{lv}'

    def listing(self, listings=None):
        if listings is None:
            listings = self.pool.listings()
        return listings.get(self.config.vid, lvm_layout.Listing())

    def _committed(self, listing):
        current = listing.current
        if current is None:
            raise errors.StorageError(
                f'volume {self.config.address}: no committed LV in thin '
                f'pool {self.pool.vg}/{self.pool.thin_pool}')
        return current

    def _publish(self, listing, suffix='t'):
        """Make the LV ``suffix`` (+t, or a stopped volume's +w) the next
        generation (the commit point) and drop what it supersedes beyond
        revisions_to_keep, in one root call; returns the listing that
        leaves."""
        generation = listing.next_generation
        dropped = self._superseded(sorted(listing.generations))
        lvm.commit(self._lv(suffix), lvm_names.generation_suffix(generation),
                   [lvm_names.generation_suffix(g) for g in dropped])
        published = listing.working if suffix == 'w' else listing.building
        kept = {g: lv for g, lv in listing.generations.items()
                if g not in dropped}
        if published is None:   # built by this call's caller: not listed
            return None
        kept[generation] = dict(published,
                                suffix=lvm_names.generation_suffix(generation))
        return dataclasses.replace(
            listing, generations=kept,
            **{'working' if suffix == 'w' else 'building': None})

    def _superseded(self, older):
        """The oldest of ``older`` (generations that are no longer the
        newest) beyond revisions_to_keep."""
        keep = max(self.config.revisions_to_keep, 0)
        return older[:max(len(older) - keep, 0)]

    def _prune(self, older):
        for generation in self._superseded(older):
            lvm.remove(self._generation_lv(generation))

    # -- lifecycle ---------------------------------------------------------

    def create(self):
        lvm_names.check_length(self.pool.vg, self.config.domain,
                               self.config.name)
        if self.config.kind != 'persistent':
            return  # storage appears only when started
        listing = self.listing()
        if not listing.empty:
            raise errors.StorageError(
                f'volume {self.config.address}: LVs of this name already '
                f'exist in {self.pool.vg}/{self.pool.thin_pool}')
        lvm.create(self._generation_lv(1), _lv_size(self.config.size),
                   False)

    def remove(self):
        return _Removal(self)

    def tidy(self, keep_import=False):
        """Remove what a crash left half-built (+t, +e) and revisions
        beyond revisions_to_keep; returns the resulting listing. (The
        manager calls it when no export can be in progress.)"""
        listing = self._tidy(keep_import)
        if listing.export is not None:
            lvm.remove(self._lv('e'))
            return self.listing()
        return listing

    def _tidy(self, keep_import=False, listing=None):
        """tidy, but an export's snapshot stays: operations call this
        while an export of the committed data may still read it.
        ``listing``: the LVs as just read, if they were."""
        if listing is None:
            listing = self.listing()
        changed = False
        if listing.building is not None and not keep_import:
            lvm.remove(self._lv('t'))
            changed = True
        keep = max(self.config.revisions_to_keep, 0)
        if self.config.kind == 'persistent' and \
                len(listing.revisions) > keep:
            self._prune([g for g, _ in listing.revisions])
            changed = True
        return self.listing() if changed else listing

    def verify(self, known=None):
        if self.config.kind == 'persistent':
            listing = known or self.listing()
            self._committed(listing)
            return listing
        if self.config.kind == 'snapshot':
            source = self.pool.volume(self.config.source)
            source._committed(source.listing())
        return None

    def start(self, verified=None):
        """Prepare the LV the hypervisor attaches; return its device."""
        listing = self._tidy(listing=verified)
        kind = self.config.kind
        if kind == 'persistent':
            generation, lv = self._committed(listing)
            if self.config.revisions_to_keep == -1:
                if not lv['active']:
                    lvm.activate(self._generation_lv(generation), True)
                return self.device(lvm_names.generation_suffix(generation))
            if listing.working is None:
                lvm.snapshot(self._generation_lv(generation), self._lv('w'),
                             True)
            elif not listing.working['active']:
                lvm.activate(self._lv('w'), True)
            self.left = dataclasses.replace(listing, working=dict(
                listing.working or lv, suffix='w', active=True))
            return self.device('w')
        if listing.working is not None:
            lvm.remove(self._lv('w'))
        if kind == 'volatile':
            lvm.create(self._lv('w'), _lv_size(self.config.size), True)
        else:
            source = self.pool.volume(self.config.source)
            generation, _ = source._committed(source.listing())
            lvm.snapshot(source._generation_lv(generation), self._lv('w'),
                         True)
        return self.device('w')

    def stop(self, known=None):
        listing = known or self.listing()
        if self.config.kind == 'persistent' and \
                self.config.revisions_to_keep == -1:
            current = listing.current
            if current and current[1]['active']:
                lvm.activate(self._generation_lv(current[0]), False)
            return
        if listing.working is None:
            return
        if self.config.kind == 'persistent':
            # What the VM wrote may still sit in the host's page cache of
            # the device: flushed before the rename commits it. The LV
            # stays active under its new name (deactivating costs an lvm
            # command and buys nothing: the activation-skip flag keeps it
            # inactive after a reboot).
            if listing.working['active']:
                lvm.flush(self._lv('w'))
            self.left = self._publish(listing, 'w')
        else:
            lvm.remove(self._lv('w'))

    # -- revisions ---------------------------------------------------------

    def revisions(self):
        return [{'id': g, 'timestamp': lvm_layout.timestamp(lv),
                 'size': lv['size']}
                for g, lv in self.listing().revisions]

    def revert(self, revision=None):
        listing = self._tidy()
        if listing.working is not None:
            raise errors.VolumeBusy(
                f'volume {self.config.address} has an uncommitted working '
                f'copy (dirty or running); stop it before reverting')
        revisions = [g for g, _ in listing.revisions]
        if not revisions:
            raise errors.RevisionNotFound(
                f'volume {self.config.address} has no revisions')
        target = revisions[-1] if revision is None else revision
        if target not in revisions:
            raise errors.RevisionNotFound(
                f'volume {self.config.address} has no revision {revision}')
        # The reverted-to content becomes a new generation: the current one
        # stays as a revision, so the revert can itself be undone.
        lvm.snapshot(self._generation_lv(target), self._lv('t'), False)
        self._publish(listing)

    # -- resize, clear, clone ----------------------------------------------

    def resize(self, size, allow_shrink, running):
        listing = self.listing()
        size = _lv_size(size)
        if running and listing.working is not None:
            lvm.resize(self._lv('w'), size, allow_shrink)
            return
        if self.config.kind != 'persistent':
            return  # a stopped volatile volume takes its size at start
        generation, _ = self._committed(listing)
        if running:  # revisions_to_keep = -1: the VM writes it directly
            lvm.resize(self._generation_lv(generation), size, allow_shrink)
            return
        # Never in place: the new size goes into a new generation.
        lvm.snapshot(self._generation_lv(generation), self._lv('t'), False)
        lvm.resize(self._lv('t'), size, allow_shrink)
        self._publish(listing)

    def clear(self):
        listing = self._tidy()
        _, lv = self._committed(listing)
        lvm.create(self._lv('t'), lv['size'], False)
        self._publish(listing)

    def import_from(self, source):
        """Replace the committed content with a thin snapshot of another
        volume's (instant; both stay independent)."""
        if source.pool.driver != self.pool.driver or \
                (source.pool.vg, source.pool.thin_pool) != \
                (self.pool.vg, self.pool.thin_pool):
            raise errors.NotSupported(
                'lvm_thin clones stay within one thin pool')
        generation, _ = source._committed(source.listing())
        listing = self._tidy()
        self._committed(listing)
        lvm.snapshot(source._generation_lv(generation), self._lv('t'),
                     False)
        self._publish(listing)

    # -- import and export ------------------------------------------------
    # Raw streams go straight to and from the LVs. Other formats go through
    # the pool's staging_dir (drivers/staging.py): qemu-img, confined to
    # files beneath the allowed roots, cannot open devices.

    @property
    def _staged(self):
        return self.pool.staging_area.volume(self.config.domain,
                                             self.config.name)

    def import_begin(self, size, fmt='raw'):
        listing = self.listing()
        names = self._staged.names()
        if listing.building is not None or \
                self._staged.upload_pending(names):
            raise errors.VolumeBusy(
                f'volume {self.config.address} already has an import pending')
        self._committed(listing)
        if fmt != 'raw':
            return self._staged.begin_import(size, fmt, names)
        lvm.create(self._lv('t'), _lv_size(size), True)
        return self.device('t')

    def import_write(self, offset, data, fmt='raw'):
        if fmt != 'raw':
            return self._staged.write(fmt, offset, data)
        return lvm.write_at(self._lv('t'), offset, data)

    def import_end(self, success, fmt='raw'):
        listing = self.listing()
        if fmt != 'raw':
            self._staged.end_import(success, fmt, self._staged.names(),
                                    lambda raw: self._load(listing, raw))
            return
        if listing.building is None:
            raise errors.InvalidArgument(
                f'volume {self.config.address} has no import pending')
        if not success:
            lvm.remove(self._lv('t'))
            return
        lvm.flush(self._lv('t'))
        self._publish(listing)

    def _load(self, listing, raw):
        """Make the raw file ``raw`` the next generation."""
        size = files.stat_path(raw)['size']
        lvm.create(self._lv('t'), _lv_size(size), True)
        lvm.import_file(self._lv('t'), raw)
        self._publish(listing)

    def export_begin(self, fmt='raw'):
        listing = self.listing()
        if listing.export is not None:
            raise errors.VolumeBusy(
                f'volume {self.config.address} is being exported already')
        generation, _ = self._committed(listing)
        lvm.snapshot(self._generation_lv(generation), self._lv('e'), True)
        if fmt == 'raw':
            return {'path': self.device('e'),
                    'size': self.listing().export['size']}
        try:
            return self._staged.begin_export(
                fmt, self._staged.names(),
                lambda raw: lvm.export_file(self._lv('e'), raw))
        finally:
            lvm.remove(self._lv('e'))

    def _check_export(self, path):
        """Whether ``path`` is a raw export (the snapshot +e) rather than
        a converted one in the staging directory."""
        if path == self.device('e'):
            return True
        if self._staged.is_export(path):
            return False
        raise errors.InvalidArgument(f'{path} is not an export of '
                                     f'{self.config.address}')

    def export_read(self, path, offset, length):
        if self._check_export(path):
            return lvm.read_at(self._lv('e'), offset, length)
        return self._staged.read(path, offset, length)

    def export_end(self, path):
        if self._check_export(path):
            lvm.remove(self._lv('e'))
        else:
            self._staged.end_export(path)

    # -- state ---------------------------------------------------------------

    def attached_format(self):
        return 'raw'

    def chain(self):
        path = self.state()['path']
        return [[{'type': 'block', 'dev': path}, 'raw']] if path else []

    def lacks_working_copy(self, listing):
        """Whether a running volume has lost what it attaches: only a stop
        removes it (see Manager.reconcile)."""
        in_place = (self.config.kind == 'persistent' and
                    self.config.revisions_to_keep == -1)
        return listing.working is None and not in_place

    def needs_attention(self, listing, running):
        keep = max(self.config.revisions_to_keep, 0)
        return bool(listing.building is not None or
                    listing.export is not None or
                    (self.config.kind == 'persistent' and
                     len(listing.revisions) > keep) or
                    (not running and listing.working is not None))

    def state(self, listings=None):
        listing = self.listing(listings)
        kind = self.config.kind
        working = listing.working
        current = listing.current
        lv = working or (current[1] if current else None)
        if lv is not None:
            size = lv['size']
        elif kind == 'snapshot':
            source = self.pool.volume(self.config.source).listing(
                listings).current
            size = source[1]['size'] if source else 0
        else:
            size = self.config.size
        outdated = False
        if kind == 'snapshot' and working is not None:
            source = self.pool.volume(self.config.source)
            source_current = source.listing(listings).current
            origin = working['origin']
            # (privsep hands lists over as tuples)
            outdated = source_current is None or tuple(origin or ()) != (
                source.config.domain, source.config.name,
                lvm_names.generation_suffix(source_current[0]))
        if working is not None:
            path = self.device('w')
        elif current is not None:
            path = self.device(lvm_names.generation_suffix(current[0]))
        else:
            path = None
        return {
            'size': size,
            'usage': lv['size'] if lv else 0,
            'is_dirty': kind == 'persistent' and working is not None,
            'is_outdated': outdated,
            'path': path,
            'import_pending': listing.building is not None,
            'has_working_copy': working is not None,
        }


def _lv_size(size):
    """LVM sizes thin LVs in whole sectors (and rounds up to extents)."""
    return max(size + (-size % lvm.SECTOR), lvm.SECTOR)


class _Removal:
    """Removal of a volume's LVs, once the record no longer lists it."""

    def __init__(self, volume):
        self.volume = volume

    def finish(self):
        self.volume.pool.remove_lvs(self.volume.config.vid)
        staged = self.volume._staged
        staged.clear(staged.names())

    def undo(self):
        pass


class LvmThinPool(base.Pool):
    driver = 'lvm_thin'
    volume_class = LvmThinVolume
    capabilities = dataclasses.replace(
        base.Capabilities(), revert=True, resize_running=True,
        clone_instant=True, import_formats=image_formats.FORMATS,
        export_formats=qemu.OUTPUT_FORMATS)
    options = dict(
        base.Pool.options,
        volume_group=base.Option(
            'LVM volume group of the thin pool', required=True,
            parse=lambda v: _lvm_name(v, 'volume_group')),
        thin_pool=base.Option(
            'thin pool LV (one the root configuration allows in '
            'allowed_thin_pools)', required=True,
            parse=lambda v: _lvm_name(v, 'thin_pool')),
        staging_dir=staging.option('devices'),
    )

    @property
    def vg(self):
        return self.options['volume_group']

    @property
    def thin_pool(self):
        return self.options['thin_pool']

    def claims(self):
        """What no other pool may use at the same time."""
        return {f'lvm thin pool {self.vg}/{self.thin_pool}'}

    def _report(self):
        return lvm.report(self.vg, self.thin_pool)

    @property
    def staging_area(self):
        return staging.Area(self.name, self.options['staging_dir'])

    def setup(self):
        self._report()  # the thin pool exists and is allowed
        self.staging_area.setup()

    def destroy(self):
        pass  # the thin pool is the host's; volsep only used it

    def listings(self):
        return lvm_layout.parse(self._report())

    def usage(self):
        pool = self._report()['pool']
        used = int(pool['size'] * pool['data_percent'] / 100)
        return {'size': pool['size'], 'used': used,
                'free': pool['size'] - used,
                'data_percent': pool['data_percent'],
                'metadata_percent': pool['metadata_percent']}

    def remove_lvs(self, vid):
        """Remove every LV of volume ``vid`` (exact names from the report;
        never a prefix match)."""
        listing = self.listings().get(vid)
        if listing is None:
            return
        domain, name = vid.split('/')
        suffixes = ['e', 't', 'w'] + [
            lvm_names.generation_suffix(g)
            for g in sorted(listing.generations)]
        present = {'e': listing.export, 't': listing.building,
                   'w': listing.working}
        for suffix in suffixes:
            if suffix in present and present[suffix] is None:
                continue
            try:
                lvm.remove(lvm_names.lv_address(self.vg, self.thin_pool,
                                                domain, name, suffix))
            except root_errors.NotFound:
                pass

    def finish_removals(self, recorded):
        """Remove the LVs of volumes the record no longer lists: a crash
        cut their removal (or creation) short. Nothing is imported or
        exported yet at start-up: what the staging directory holds was
        left by an operation cut short, and goes too."""
        done = self.staging_area.clear_all()
        for vid in sorted(set(self.listings()) - set(recorded)):
            self.remove_lvs(vid)
            done.append(('deleted', vid))
        return done


def _lvm_name(value, what):
    try:
        return lvm_names.lvm_name(value, what)
    except root_errors.InvalidArgument:
        raise errors.InvalidArgument(
            f'{what} {value!r} is not a valid LVM name') from None

