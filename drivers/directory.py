"""Volumes as image files in a directory; the base of `file` and
`file-reflink`, which differ only in how they copy.

Every step that publishes content is atomic on its own (a clone built
unnamed and then linked, a rename), and the steps are ordered so that a
crash between any two leaves either the old or the new committed state,
which `tidy` then completes. The renames and removals of one commit are
one privileged call (files.rotate), which makes each rename durable before
the next step.
"""

import dataclasses
import logging
import os

from volsep.drivers import base
from volsep.drivers import errors
from volsep.drivers import layout
from volsep.privileged import contexts
from volsep.privileged import errors as root_errors
from volsep.privileged import files
from volsep.privileged import handover
from volsep.privileged import image_formats
from volsep.privileged import qemu
from volsep.privileged import transfers

LOG = logging.getLogger('volsep.drivers.directory')
# A direct export is tried on a newer image if commits keep retiring the
# one it was about to open; past this many, the caller is told.
_DIRECT_EXPORT_ATTEMPTS = 3


class DirectoryVolume(base.Volume):

    @property
    def directory(self):
        return f'{self.pool.dir_path}/{self.config.domain}/{self.config.name}'

    def _path(self, name):
        return f'{self.directory}/{name}'

    def listing(self, listings=None):
        """This volume's files; from ``listings`` (a pool-wide scan) when
        given, else read now."""
        if listings is not None:
            return listings.get(self.config.vid, layout.Listing())
        try:
            return layout.parse(files.list_dir(self.directory))
        except root_errors.NotFound:
            return layout.Listing()

    def _committed(self, listing):
        current = listing.current
        if current is None:
            raise errors.StorageError(
                f'volume {self.config.address}: committed image missing in '
                f'{self.directory}')
        return current

    def _ensure_directory(self):
        domain_dir = f'{self.pool.dir_path}/{self.config.domain}'
        for path in (domain_dir, self.directory):
            try:
                files.mkdir(path, 0o755)
            except root_errors.AlreadyExists:
                pass

    def _publish_generation(self, listing, source_name):
        """Rename ``source_name`` to the next committed generation, retire
        the previous one and drop the oldest revisions, all in one root
        call; returns the listing that leaves."""
        renames = [(source_name,
                    layout.committed(listing.next_generation))]
        retire, unlinks = self._retirement(
            [listing.current] if listing.current else [],
            [r.entry['name'] for r in listing.revisions
             if r.entry['name'] != source_name])
        self._rotate(renames + retire, unlinks)
        return layout.after(listing, renames + retire, unlinks)

    def _retirement(self, superseded, revisions):
        """(renames, unlinks) that turn the committed images ``superseded``
        ((generation, entry) pairs) into revisions, or drop them, and drop
        the oldest revisions beyond revisions_to_keep. ``revisions``: the
        names there are, oldest first; None keeps them all."""
        renames, unlinks = [], []
        kept = list(revisions or ())
        for generation, entry in superseded:
            if self.config.revisions_to_keep > 0:
                revision = layout.revision(generation)
                renames.append((entry['name'], revision))
                kept.append(revision)
            else:
                unlinks.append(entry['name'])
        if revisions is not None:
            kept.sort(key=_revision_order)
            keep = max(self.config.revisions_to_keep, 0)
            unlinks += kept[:max(len(kept) - keep, 0)]
        return renames, unlinks

    def _rotate(self, renames, unlinks):
        if renames or unlinks:
            files.rotate(self.directory, [list(pair) for pair in renames],
                         unlinks)

    # -- lifecycle ---------------------------------------------------------

    def create(self):
        if self.config.kind != 'persistent':
            return  # storage appears only when started
        self._ensure_directory()
        listing = self.listing()
        if listing.committed:
            raise errors.StorageError(
                f'volume {self.config.address}: an image already exists in '
                f'{self.directory}')
        files.create(self._path(layout.committed(listing.next_generation)),
                     self.config.size)

    def remove(self):
        """All or nothing: refuse, changing nothing, unless the whole
        directory can go (only regular files volsep's root side made, none
        in use), else rename it aside in one step. Returns the removal to
        finish once the record no longer lists the volume (or to undo if
        recording fails), or None when there was no directory."""
        if not self._exists():
            self.pool.remove_domain_directory(self.config.domain)
            return None
        for entry in files.list_dir(self.directory):
            if entry['type'] != 'file':
                raise errors.StorageError(
                    f'cannot remove {self.config.address}: {self.directory}'
                    f' holds {entry["name"]!r} ({entry["type"]}), which '
                    f'volsep did not make; nothing was removed (move it '
                    f'away by hand, then remove again)')
        aside = f'{self.pool.dir_path}/{self.config.domain}/' \
            f'{layout.aside(self.config.name)}'
        try:
            files.stat_path(aside)
        except root_errors.NotFound:
            pass
        else:  # left by an earlier removal of a volume of this name
            self.pool.purge(aside)
        files.set_aside(self.directory, layout.aside(self.config.name))
        return _Removal(self, aside)

    def _exists(self):
        try:
            files.stat_path(self.directory)
        except root_errors.NotFound:
            return False
        return True

    def tidy(self, keep_import=False, listing=None):
        """Finish what a crash interrupted and drop leftovers; touches only
        this volume's own directory. Returns the resulting listing.
        ``listing``: the directory as just read, if it was."""
        if listing is None:
            listing = self.listing()
        renames, unlinks = self._retirement(
            listing.committed[:-1],
            [r.entry['name'] for r in listing.revisions]
            if self.config.kind == 'persistent' else None)
        unlinks += [entry['name'] for entry in listing.exports]
        if not keep_import:
            unlinks += [entry['name'] for entry in listing.uploads + (
                [listing.import_target] if listing.import_target else [])]
        self._rotate(renames, unlinks)
        changed = bool(renames or unlinks)
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
        """Prepare the image the hypervisor attaches; return its path."""
        listing = self.tidy(listing=verified)
        kind = self.config.kind
        if kind == 'persistent':
            generation, entry = self._committed(listing)
            if self.config.revisions_to_keep == -1:
                return self._path(entry['name'])
            if listing.working is None:
                files.clone(self._path(entry['name']),
                            self._path(layout.working()),
                            self.pool.clone_mode)
                listing = layout.after(listing, added=[
                    dict(entry, name=layout.working())])
            self.left = listing
            return self._path(layout.working())
        self._ensure_directory()
        if listing.working is not None:
            files.unlink(self._path(listing.working['name']))
        if kind == 'volatile':
            files.create(self._path(layout.working()), self.config.size)
            return self._path(layout.working())
        source = self.pool.volume(self.config.source)
        generation, entry = source._committed(source.listing())
        target = self._path(layout.working(generation))
        files.clone(source._path(entry['name']), target, self.pool.clone_mode)
        return target

    def stop(self, known=None):
        listing = known or self.listing()
        if listing.working is None:
            return
        if (self.config.kind == 'persistent' and
                self.config.revisions_to_keep >= 0):
            self.left = self._publish_generation(
                listing, listing.working['name'])
        else:
            files.unlink(self._path(listing.working['name']))
            if self.config.kind != 'persistent':
                self._remove_empty_directory()

    def _remove_empty_directory(self):
        try:
            files.rmdir(self.directory)
        except (root_errors.NotFound, root_errors.InvalidArgument):
            pass

    # -- revisions ---------------------------------------------------------

    def revisions(self):
        return [{'id': r.id, 'timestamp': r.timestamp,
                 'size': r.entry['size']} for r in self.listing().revisions]

    def revert(self, revision=None):
        listing = self.tidy()
        if listing.working is not None:
            raise errors.VolumeBusy(
                f'volume {self.config.address} has an uncommitted working '
                f'copy (dirty or running); stop it before reverting')
        if not listing.revisions:
            raise errors.RevisionNotFound(
                f'volume {self.config.address} has no revisions')
        if revision is None:
            target = listing.revisions[-1]
        else:
            target = next((r for r in listing.revisions
                           if r.id == revision), None)
            if target is None:
                raise errors.RevisionNotFound(
                    f'volume {self.config.address} has no revision '
                    f'{revision}')
        self._publish_generation(listing, target.entry['name'])

    # -- import, export, clone, clear -------------------------------------

    def import_begin(self, size, fmt='raw'):
        """Make the file an import stream is written into: the import
        target itself for raw data, else an upload converted at the end."""
        listing = self.listing()
        if listing.import_target is not None or listing.uploads:
            raise errors.VolumeBusy(
                f'volume {self.config.address} already has an import pending')
        self._committed(listing)
        path = self._path(layout.upload(fmt))
        files.create(path, size)
        return path

    def import_write(self, offset, data, fmt='raw'):
        return files.write_at(self._path(layout.upload(fmt)), offset, data)

    def import_descriptor(self, fd, size, source_offset, stall_timeout,
                          fmt='raw'):
        """Fill an import's upload from the caller's descriptor ``fd``, in
        one root call."""
        return transfers.import_from_descriptor(
            self._path(layout.upload(fmt)), _hand_over(fd), size,
            source_offset, share=self.pool.clone_mode != 'never',
            stall_timeout=stall_timeout)

    def import_end(self, success, fmt='raw'):
        listing = self.listing()
        upload = layout.upload(fmt)
        pending = {e['name'] for e in listing.uploads}
        if listing.import_target is not None:
            pending.add(layout.IMPORT)
        if upload not in pending:
            raise errors.InvalidArgument(
                f'volume {self.config.address} has no {fmt} import pending')
        if not success:
            for name in sorted(pending):
                files.unlink(self._path(name))
            return
        if fmt == 'raw':
            files.fsync(self._path(layout.IMPORT))
        else:
            # convert re-checks the upload before qemu-img reads it, and
            # publishes the converted target only once it is complete.
            qemu.convert(self._path(upload), fmt, self._path(layout.IMPORT),
                         'raw')
        self._publish_generation(listing, layout.IMPORT)
        if fmt != 'raw':
            files.unlink(self._path(upload))

    def import_from(self, source):
        """Replace the committed content with a copy of another volume's
        (of a file or file-reflink pool)."""
        if not isinstance(source, DirectoryVolume):
            raise errors.NotSupported(
                f'{source.config.address} is in pool {source.pool.name} '
                f'({source.pool.driver}): a file pool clones only from '
                f'file pools; export it and import the export')
        _, entry = source._committed(source.listing())
        listing = self.listing()
        self._committed(listing)
        same_pool = source.pool is self.pool
        mode = self.pool.clone_mode if same_pool else (
            'never' if 'never' in (self.pool.clone_mode,
                                   source.pool.clone_mode) else 'auto')
        files.clone(source._path(entry['name']), self._path(layout.IMPORT),
                    mode)
        self._publish_generation(listing, layout.IMPORT)

    def clear(self):
        listing = self.listing()
        _, entry = self._committed(listing)
        files.create(self._path(layout.IMPORT), entry['size'])
        self._publish_generation(listing, layout.IMPORT)

    def export_begin(self, fmt='raw'):
        """A private snapshot of the committed data, in ``fmt``; later
        commits do not change it."""
        _, entry = self._committed(self.listing())
        snapshot = self._path(layout.export())
        # Not flushed: a crash loses only the export, whose leftover
        # tidy() deletes.
        files.clone(self._path(entry['name']), snapshot, self.pool.clone_mode,
                    durable=False)
        if fmt == 'raw':
            return {'path': snapshot, 'size': entry['size']}
        try:
            target = self._path(layout.export(fmt))
            qemu.convert(snapshot, 'raw', target, fmt)
        finally:
            files.unlink(snapshot)
        return {'path': target, 'size': files.stat_path(target)['size']}

    def direct_export_size(self):
        # Only where the committed image never changes in place: every
        # commit, revert, import, clear or resize of a stopped volume
        # publishes a new file by rename. With revisions_to_keep=-1 the VM
        # writes it, so the export needs its snapshot.
        if self.config.kind != 'persistent' or \
                self.config.revisions_to_keep < 0:
            return None
        return self._committed(self.listing())[1]['size']

    def export_committed(self, fd, size, stall_timeout):
        """Write the committed image (of ``size`` bytes, as announced)
        straight into the caller's descriptor, without a snapshot: a
        commit meanwhile renames or unlinks the file the root side has
        open, never its content. One that retired it before it was
        opened fails the call with NotFound, and the newer image is
        copied instead."""
        for _ in range(_DIRECT_EXPORT_ATTEMPTS):
            _, entry = self._committed(self.listing())
            if entry['size'] != size:
                raise errors.VolumeBusy(
                    f'volume {self.config.address} was resized as its '
                    f'export began; export it again')
            try:
                return transfers.export_to_descriptor(
                    self._path(entry['name']), _hand_over(fd),
                    share=self.pool.clone_mode != 'never',
                    stall_timeout=stall_timeout, size=size, hold=False)
            except root_errors.NotFound:
                continue
        raise errors.VolumeBusy(f'volume {self.config.address} kept '
                                f'changing as its export began; export it '
                                f'again')

    def _check_export(self, path):
        name = path.rsplit('/', 1)[-1]
        if path != self._path(name) or not layout.is_export(name):
            raise errors.InvalidArgument(f'{path} is not an export of '
                                         f'{self.config.address}')

    def export_read(self, path, offset, length):
        self._check_export(path)
        return files.read_at(path, offset, length)

    def export_descriptor(self, path, fd, stall_timeout):
        """Write a raw export into the caller's descriptor ``fd``."""
        self._check_export(path)
        return transfers.export_to_descriptor(
            path, _hand_over(fd), share=self.pool.clone_mode != 'never',
            stall_timeout=stall_timeout)

    def export_end(self, path):
        self._check_export(path)
        files.unlink(path)

    # -- resize ------------------------------------------------------------

    def resize(self, size, allow_shrink, running):
        listing = self.listing()
        if running and listing.working is not None:
            files.truncate(self._path(listing.working['name']), size,
                           allow_shrink=allow_shrink)
            return
        if self.config.kind != 'persistent':
            return  # a stopped volatile volume takes its size at start
        generation, entry = self._committed(listing)
        if running:  # revisions_to_keep = -1: the VM writes it directly
            files.truncate(self._path(entry['name']), size,
                           allow_shrink=allow_shrink)
            return
        # Never in place: the new size goes into a new generation.
        new = self._path(layout.committed(listing.next_generation))
        files.clone(self._path(entry['name']), new, self.pool.clone_mode,
                    size=size)
        self._rotate(*self._retirement(
            [(generation, entry)],
            [r.entry['name'] for r in listing.revisions]))

    # -- state -------------------------------------------------------------

    def lacks_working_copy(self, listing):
        """Whether a running volume has lost what it attaches: only a stop
        removes it (see Manager.reconcile)."""
        in_place = (self.config.kind == 'persistent' and
                    self.config.revisions_to_keep == -1)
        return listing.working is None and not in_place

    def needs_attention(self, listing, running):
        """Whether reconciliation has work here (see tidy and stop)."""
        keep = max(self.config.revisions_to_keep, 0)
        return bool(len(listing.committed) > 1 or listing.exports or
                    listing.import_target is not None or listing.uploads or
                    (self.config.kind == 'persistent' and
                     len(listing.revisions) > keep) or
                    (not running and listing.working is not None))

    def state(self, listings=None):
        """What the disk says: size, usage, dirtiness, path, outdatedness."""
        listing = self.listing(listings)
        kind = self.config.kind
        working = listing.working
        current = listing.current
        image = working or (current[1] if current else None)
        if kind == 'persistent':
            size = image['size'] if image else 0
        elif working is not None:
            size = working['size']
        elif kind == 'snapshot':
            source = self.pool.volume(self.config.source).listing(
                listings).current
            size = source[1]['size'] if source else 0
        else:
            size = self.config.size
        outdated = False
        if kind == 'snapshot' and working is not None:
            source = self.pool.volume(self.config.source).listing(
                listings).current
            outdated = (source is None or
                        source[0] != listing.working_source_gen)
        return {
            'size': size,
            'usage': image['allocated'] if image else 0,
            'is_dirty': kind == 'persistent' and working is not None,
            'is_outdated': outdated,
            'path': self._path(image['name']) if image else None,
            'import_pending': bool(listing.import_target or
                                  listing.uploads),
            'has_working_copy': working is not None,
        }


class _Removal:
    """A volume directory renamed aside by DirectoryVolume.remove."""

    def __init__(self, volume, aside):
        self.volume = volume
        self.aside = aside

    def finish(self):
        self.volume.pool.purge(self.aside)
        self.volume.pool.remove_domain_directory(self.volume.config.domain)

    def undo(self):
        files.set_aside(self.aside, self.volume.config.name)


def _hand_over(fd):
    """The token under which the transfers daemon can claim ``fd``."""
    outbox = handover.outbox(contexts.long_jobs)
    if outbox is None:
        raise errors.NotSupported('the root daemon takes no descriptors')
    return outbox.give(fd)


def _revision_order(name):
    return int(name[1:name.index('@')])


class DirectoryPool(base.Pool):
    volume_class = DirectoryVolume
    capabilities = dataclasses.replace(
        base.Capabilities(), revert=True, resize_running=True,
        import_formats=image_formats.FORMATS,
        export_formats=('raw', 'qcow2'), descriptors=True)
    clone_mode = 'never'
    options = dict(base.Pool.options, dir_path=base.Option(
        'absolute directory of the pool, beneath an allowed root',
        required=True))

    @classmethod
    def parse_options(cls, given):
        parsed = super().parse_options(given)
        path = parsed['dir_path']
        if not path.startswith('/') or path.rstrip('/') != path or \
                os.path.normpath(path) != path:
            raise errors.InvalidArgument(
                f'dir_path {path!r} must be absolute and normal, without a '
                f'trailing /')
        return parsed

    def takes_descriptors(self):
        return handover.outbox(contexts.long_jobs) is not None

    @property
    def dir_path(self):
        return self.options['dir_path']

    def setup(self):
        """Make the pool's directory (an existing one is used as it is);
        if a check then refuses the pool, a directory made here is removed
        again, so a refused pool leaves nothing behind."""
        try:
            files.mkdir(self.dir_path, 0o755)
        except root_errors.AlreadyExists:
            created = False
        else:
            created = True
        try:
            self.check_setup()
        except BaseException:
            if created:
                files.rmdir(self.dir_path)
            raise

    def check_setup(self):
        """Refuse a pool whose directory cannot serve (StorageError)."""

    def listings(self):
        """Every volume's files in one root call: {'DOMAIN/VOLUME':
        Listing}."""
        try:
            tree = files.list_tree(self.dir_path, 2)
        except root_errors.NotFound:
            return {}
        return {vid: layout.parse(entries) for vid, entries in tree.items()}

    # -- removal, leftovers and orphans --------------------------------------

    def remove_domain_directory(self, domain):
        try:
            files.rmdir(f'{self.dir_path}/{domain}')
        except (root_errors.NotFound, root_errors.InvalidArgument):
            pass  # gone already, or other volumes of the domain remain

    def purge(self, path):
        """Delete a directory that remove set aside: its files, then it."""
        for entry in files.list_dir(path):
            files.unlink(f'{path}/{entry["name"]}')
        files.rmdir(path)

    def finish_removals(self, recorded):
        """Complete removals a crash interrupted: an aside directory whose
        volume is still recorded and has no directory goes back (the
        removal never took effect); any other is deleted. ``recorded``:
        the vids this pool's volumes have in the record. Returns
        [(action, path)]."""
        try:
            tree = files.list_tree(self.dir_path, 2)
        except root_errors.NotFound:
            return []
        done = []
        for vid in sorted(tree):
            domain, name = vid.split('/')
            owner = layout.aside_owner(name)
            if owner is None:
                continue
            path = f'{self.dir_path}/{vid}'
            if f'{domain}/{owner}' in recorded and \
                    f'{domain}/{owner}' not in tree:
                files.set_aside(path, owner)
                done.append(('restored', f'{domain}/{owner}'))
                continue
            try:
                self.purge(path)
            except Exception as err:
                LOG.warning('pool %s: could not delete %s, left by an '
                            'interrupted volume removal: %s', self.name,
                            path, err)
                continue
            self.remove_domain_directory(domain)
            done.append(('deleted', vid))
        return done

    def orphans(self, recorded, other_pools=()):
        """Entries in the pool's directory that no recorded volume owns:
        [{path (relative to the pool), type, size}]. ``recorded``: the
        vids of this pool's volumes; ``other_pools``: directories of other
        pools, never reported (pools nested in older states)."""
        prefix = self.dir_path + '/'

        def holds_pool(rel):
            return any(o == prefix + rel or o.startswith(prefix + rel + '/')
                       for o in other_pools)

        def orphan(rel, entry):
            return {'path': rel, 'type': entry['type'],
                    'size': entry['size'] if entry['type'] == 'file'
                    else None}
        try:
            top = files.list_dir(self.dir_path)
        except root_errors.NotFound:
            return []
        domains = {vid.split('/')[0] for vid in recorded}
        level1 = files.list_tree(self.dir_path, 1)
        volumes = self.listings()
        found = []
        for entry in top:
            domain = entry['name']
            if holds_pool(domain):
                continue
            if entry['type'] != 'dir' or domain not in domains:
                found.append(orphan(domain, entry))
                continue
            for sub in level1.get(domain, ()):
                vid = f'{domain}/{sub["name"]}'
                if holds_pool(vid):
                    continue
                if sub['type'] != 'dir' or vid not in recorded:
                    found.append(orphan(vid, sub))
                    continue
                listing = volumes.get(vid)
                for unknown in getattr(listing, 'unknown', ()):
                    found.append(orphan(f'{vid}/{unknown["name"]}', unknown))
        return found

    def _removal_plan(self, rel, kind):
        """(files, directories) to delete for one orphan, deepest first;
        StorageError if something in it cannot be removed through the
        root side."""
        path = f'{self.dir_path}/{rel}'
        if kind == 'file':
            return [path], []
        if kind != 'dir':
            raise errors.StorageError(
                f'pool {self.name}: {rel} is neither a regular file nor a '
                f'directory ({kind}); the root side removes only those: '
                f'remove it by hand; nothing was removed')
        unlink, rmdir = [], []
        for entry in files.list_dir(path):
            sub = f'{rel}/{entry["name"]}'
            more_files, more_dirs = self._removal_plan(sub, entry['type'])
            unlink += more_files
            rmdir += more_dirs
        return unlink, rmdir + [path]

    def remove_orphans(self, orphans):
        """Delete exactly these orphans (entries of ``orphans()``), after
        checking all of them can go; returns their paths."""
        plans = [self._removal_plan(o['path'], o['type']) for o in orphans]
        for unlink, rmdir in plans:
            for path in unlink:
                files.unlink(path)
            for path in rmdir:
                files.rmdir(path)
        return [o['path'] for o in orphans]

    def destroy(self):
        try:
            files.rmdir(self.dir_path)
        except (root_errors.NotFound, root_errors.InvalidArgument):
            pass  # already gone, or holds files that are not volsep's

    def usage(self):
        return files.filesystem_usage(self.dir_path)
