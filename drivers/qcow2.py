"""The `qcow2` driver: a volume is a backing chain of qcow2 layers over a
raw or qcow2 base, in its own directory POOL/DOMAIN/VOLUME/:

    L<N>.qcow2, L<N>.raw   committed layers, generation N; each qcow2 layer
                           is backed by the one below it (absolute path and
                           explicit backing format); only the base is raw
    w.qcow2                overlay of a running persistent or volatile volume
    w@<G>.qcow2            a snapshot's overlay on its source's layer L<G>
    i.img, i.<FORMAT>      a pending import (names as in layout.py)
    x-<hex>.img|.qcow2     an export: the committed chain flattened

Revert, import, clone and resize each add one new top layer over the
committed top, so the state they replace stays a revision below it (and
revision ids only grow): a revert's layer holds what differs between the
revision and the top; an import's or a clone's holds every cluster of the
new content (a full, flattened copy: a layer shared with another volume
could be merged or removed by that volume's own pruning); a resize's is
an empty overlay of the new virtual size (beyond a smaller layer below, a
qcow2 overlay reads zeros).

Starting a persistent volume puts w.qcow2 on the top layer; stopping renames
it to the next L<N>, so the old top becomes a revision. Revisions beyond
revisions_to_keep are merged away from the bottom (block-pull of the base
into the layer above), never left as orphans. The frontend keeps the record
of each chain (VolumeConfig.chain, paths relative to the pool); the root
side checks every header against that record before qemu-img merges
anything.
"""

import dataclasses
import datetime
import re

from volsep.drivers import base
from volsep.drivers import directory
from volsep.drivers import errors
from volsep.drivers import layout
from volsep.privileged import chain as root_chain
from volsep.privileged import errors as root_errors
from volsep.privileged import files
from volsep.privileged import image_formats
from volsep.privileged import qemu

_LAYER = re.compile(r'L([0-9]{1,18})\.(raw|qcow2)')
_OVERLAY = re.compile(r'w(?:@([0-9]{1,18}))?\.qcow2')
SECTOR = 512


@dataclasses.dataclass
class ChainListing:
    layers: dict = dataclasses.field(default_factory=dict)  # gen -> entry
    overlay: object = None
    overlay_source_gen: object = None
    import_target: object = None
    uploads: list = dataclasses.field(default_factory=list)
    exports: list = dataclasses.field(default_factory=list)
    unknown: list = dataclasses.field(default_factory=list)


def parse(entries):
    listing = ChainListing()
    for entry in entries:
        name = entry['name']
        if entry['type'] != 'file':
            listing.unknown.append(entry)
        elif m := _LAYER.fullmatch(name):
            listing.layers[int(m[1])] = entry
        elif m := _OVERLAY.fullmatch(name):
            listing.overlay = entry
            listing.overlay_source_gen = int(m[1]) if m[1] else None
        elif name == layout.IMPORT:
            listing.import_target = entry
        elif layout.is_upload(name):
            listing.uploads.append(entry)
        elif layout.is_export(name):
            listing.exports.append(entry)
        else:
            listing.unknown.append(entry)
    return listing


def generation(path):
    return int(_LAYER.fullmatch(path.rsplit('/', 1)[-1])[1])


class Qcow2Volume(directory.DirectoryVolume):

    # Not built for chains yet: a clear NotSupported error.
    clear = base.Volume.clear

    def listing(self, listings=None):
        if listings is not None:
            return listings.get(self.config.vid, ChainListing())
        try:
            return parse(files.list_dir(self.directory))
        except root_errors.NotFound:
            return ChainListing()

    def _committed(self, listing):
        # What a file pool's clone would copy: a chain is no single file.
        raise errors.NotSupported(
            f'volume {self.config.address} is a qcow2 chain: a file pool '
            f'cannot clone it (export it and import the export instead)')

    def _relative(self, name):
        return f'{self.config.domain}/{self.config.name}/{name}'

    def absolute(self, relative):
        return f'{self.pool.dir_path}/{relative}'

    def recorded(self):
        """The committed chain as recorded: [[absolute path, format]]."""
        return [[self.absolute(rel), fmt] for rel, fmt in self.config.chain]

    def set_record(self, absolute_chain):
        prefix = self.pool.dir_path + '/'
        if not all(path.startswith(prefix) for path, _ in absolute_chain):
            raise errors.InvalidArgument('a chain record names a file '
                                         'outside the pool')
        self.config.chain = [[path[len(prefix):], fmt]
                             for path, fmt in absolute_chain]

    def newest_layer(self):
        """The recorded top if it exists, else the newest layer file."""
        listing = self.listing()
        if self.config.chain and \
                generation(self._top()[0]) in listing.layers:
            return self._top()
        if not listing.layers:
            raise errors.StorageError(f'volume {self.config.address} has no '
                                      f'layers in {self.directory}')
        name = listing.layers[max(listing.layers)]['name']
        return [self._path(name), name.rsplit('.', 1)[1]]

    def _top(self):
        if not self.config.chain:
            raise errors.StorageError(
                f'volume {self.config.address} has no recorded chain')
        return self.recorded()[0]

    def _overlay_path(self, source_gen=None):
        name = 'w.qcow2' if source_gen is None else f'w@{source_gen}.qcow2'
        return self._path(name)

    def attached_format(self):
        if self.config.kind == 'persistent' and \
                self.config.revisions_to_keep == -1:
            return self._top()[1]
        return 'qcow2'

    # -- lifecycle ---------------------------------------------------------

    def create(self):
        if self.config.kind != 'persistent':
            return
        self._ensure_directory()
        if self.listing().layers:
            raise errors.StorageError(
                f'volume {self.config.address}: layers already exist in '
                f'{self.directory}')
        fmt = self.config.format
        qemu.create(self._path(f'L1.{fmt}'), fmt, self.config.size)
        self.config.chain = [[self._relative(f'L1.{fmt}'), fmt]]

    def verify(self, known=None):
        volume = self if self.config.kind == 'persistent' else (
            self.pool.volume(self.config.source)
            if self.config.kind == 'snapshot' else None)
        if volume is None:
            return
        path, _ = volume._top()
        if generation(path) not in volume.listing().layers:
            raise errors.StorageError(f'volume {volume.config.address}: '
                                      f'top layer {path} is missing')

    def _virtual_size(self, path, fmt):
        return root_chain.layer(path, fmt)['virtual_size']

    def start(self, verified=None):
        # verify() reads the chain, not the listing start tidies by.
        kind = self.config.kind
        if kind == 'persistent':
            listing = self.tidy()
            top, fmt = self._top()
            if self.config.revisions_to_keep == -1:
                return top
            if listing.overlay is None:
                qemu.create(self._overlay_path(), 'qcow2',
                            self._virtual_size(top, fmt), backing=top,
                            backing_fmt=fmt)
            return self._overlay_path()
        self._ensure_directory()
        listing = self.listing()
        if listing.overlay is not None:
            files.unlink(self._path(listing.overlay['name']))
        if kind == 'volatile':
            qemu.create(self._overlay_path(), 'qcow2', self.config.size)
            return self._overlay_path()
        top, fmt = self.pool.volume(self.config.source)._top()
        target = self._overlay_path(generation(top))
        qemu.create(target, 'qcow2', self._virtual_size(top, fmt),
                    backing=top, backing_fmt=fmt)
        return target

    def stop(self, known=None):
        listing = self.listing()
        if listing.overlay is None:
            return
        overlay = self._path(listing.overlay['name'])
        if self.config.kind != 'persistent':
            files.unlink(overlay)
            self._remove_empty_directory()
            return
        if self.config.revisions_to_keep == -1:
            files.unlink(overlay)  # a stale one: the top was written
            return
        self._check_overlay(overlay)
        new = f'L{max(listing.layers, default=0) + 1}.qcow2'
        files.rename(overlay, self._path(new), noreplace=True)
        self.config.chain = [[self._relative(new), 'qcow2']] + \
            self.config.chain
        self._prune()

    def _check_overlay(self, overlay):
        """A running overlay may have been damaged (by a compromised
        hypervisor, by disk corruption): it becomes a layer only if its
        header still passes the rules and names the top as recorded."""
        top, fmt = self._top()
        try:
            header = root_chain.layer(overlay, 'qcow2')
        except root_errors.PrivilegedError as err:
            raise errors.UnsafeImage(
                f'volume {self.config.address}: its running overlay is '
                f'damaged, nothing was committed: {err}') from None
        if (header['backing'], header['backing_format']) != (top, fmt):
            raise errors.ChainMismatch(
                f'volume {self.config.address}: its running overlay names '
                f'backing {header["backing"]!r} ({header["backing_format"]}),'
                f' not the top {top} ({fmt}); nothing was committed')

    def _prune(self):
        """Merge the base into the layer above while more revisions are
        kept than wanted, unless a running snapshot reads through it."""
        keep = max(self.config.revisions_to_keep, 0)
        while len(self.config.chain) - 1 > keep:
            layers = self.recorded()
            if layers[-1][0] in self.pool.layers_in_use():
                return
            self.set_record(root_chain.pull(layers, len(layers) - 2,
                                         len(layers)))

    def tidy(self, keep_import=False):
        """Finish what a crash interrupted: adopt a committed overlay the
        record missed (a stop's, a revert's, an import's, a clone's or a
        resize's new top), complete an interrupted prune, drop layers
        outside the record, exports and (unless ``keep_import``) pending
        imports, prune. Returns the listing."""
        listing = self.listing()
        leftovers = listing.exports + ([] if keep_import else (
            listing.uploads + ([listing.import_target]
                               if listing.import_target else [])))
        for entry in leftovers:
            files.unlink(self._path(entry['name']))
        if leftovers:
            listing = self.listing()
        if self.config.kind != 'persistent' or not self.config.chain:
            return listing
        top, fmt = self._top()
        for gen in sorted(g for g in listing.layers if g > generation(top)):
            path = self._path(listing.layers[gen]['name'])
            if path.endswith('.qcow2'):
                header = root_chain.layer(path, 'qcow2')
                if (header['backing'], header['backing_format']) == \
                        (top, fmt):
                    self.config.chain.insert(0, [self._relative(
                        listing.layers[gen]['name']), 'qcow2'])
                    top, fmt = path, 'qcow2'
        layers = self.recorded()
        if len(layers) > 1 and layers[-2][1] == 'qcow2':
            above = root_chain.layer(*layers[-2])
            if above['backing'] is None:  # a pull that ended before unlink
                self.config.chain.pop()
        kept = {generation(path) for path, _ in self.recorded()}
        for gen, entry in listing.layers.items():
            if gen not in kept:
                files.unlink(self._path(entry['name']))
        self._prune()
        return self.listing()

    # -- new top layers: revert, import, clone, resize ---------------------

    def _next_layer(self, listing):
        """The path of a new top layer: the next generation above every
        layer on disk."""
        return self._path(f'L{max(listing.layers, default=0) + 1}.qcow2')

    def _push(self, new_chain):
        """Record the chain a root call returned (a new top over the
        recorded one), then merge away revisions beyond the limit."""
        self.set_record(new_chain)
        self._prune()

    def _check_stopped(self, listing, what):
        if listing.overlay is not None:
            raise errors.VolumeBusy(
                f'volume {self.config.address} has an uncommitted overlay '
                f'(dirty or running); stop it before {what}')

    def _check_sectors(self, size, what):
        # qemu-img would round a qcow2 layer's size up, silently.
        if size % SECTOR:
            raise errors.InvalidArgument(
                f'{what} {self.config.address}: a qcow2 volume is a whole '
                f'number of {SECTOR}-byte sectors, not {size} bytes')

    def revert(self, revision=None):
        listing = self.tidy()
        self._check_stopped(listing, 'reverting')
        layers = self.recorded()
        ids = [generation(path) for path, _ in layers[1:]]
        if not ids:
            raise errors.RevisionNotFound(
                f'volume {self.config.address} has no revisions')
        if revision is None:
            index = 1
        elif revision in ids:
            index = ids.index(revision) + 1
        else:
            raise errors.RevisionNotFound(
                f'volume {self.config.address} has no revision {revision}')
        self._push(root_chain.revert(layers, index,
                                     self._next_layer(listing)))

    def resize(self, size, allow_shrink, running):
        if running:
            # qemu-img must not change an image a hypervisor has open, and
            # a new layer would not reach the guest until it reopens its
            # disk: refused rather than half done.
            raise errors.VolumeBusy(
                f'volume {self.config.address} is running: a qcow2 volume '
                f'is resized while stopped')
        self._check_sectors(size, 'resizing')
        if self.config.kind != 'persistent':
            return  # a stopped volatile volume takes its size at start
        listing = self.tidy()
        self._check_stopped(listing, 'resizing')
        top, fmt = self._top()
        new = self._next_layer(listing)
        qemu.create(new, 'qcow2', size, backing=top, backing_fmt=fmt)
        self._push([[new, 'qcow2']] + self.recorded())

    def import_begin(self, size, fmt='raw'):
        listing = self.listing()
        if listing.import_target is not None or listing.uploads:
            raise errors.VolumeBusy(
                f'volume {self.config.address} already has an import pending')
        self._check_stopped(listing, 'importing')
        if fmt == 'raw':   # the stream is the volume
            self._check_sectors(size, 'importing into')
        self.verify()
        path = self._path(layout.upload(fmt))
        files.create(path, size)
        return path

    def import_end(self, success, fmt='raw'):
        listing = self.listing()
        upload = layout.upload(fmt)
        pending = sorted({e['name'] for e in listing.uploads} | (
            {layout.IMPORT} if listing.import_target else set()))
        if upload not in pending:
            raise errors.InvalidArgument(
                f'volume {self.config.address} has no {fmt} import pending')
        if success:
            # The root side checks the image again on a frozen copy.
            self._push(root_chain.import_image(
                self.recorded(), self._path(upload), fmt,
                self._next_layer(listing)))
        for name in pending:
            files.unlink(self._path(name))

    def import_from(self, source):
        """Replace the committed content with a flattened copy of another
        volume's (of this pool or a file pool)."""
        listing = self.tidy()
        self._check_stopped(listing, 'cloning into it')
        self._push(root_chain.copy_chain(
            self.recorded(), _committed_chain(source),
            self._next_layer(listing)))

    # -- export ------------------------------------------------------------

    # A chain is exported flattened, never straight from its top layer.
    direct_export_size = base.Volume.direct_export_size
    export_committed = base.Volume.export_committed

    def export_begin(self, fmt='raw'):
        """A private flattened copy of the committed chain, in ``fmt``;
        commits while it is read (the hypervisor writes only its overlay)
        do not change it."""
        if fmt not in qemu.OUTPUT_FORMATS:
            raise errors.InvalidArgument(f'a qcow2 volume exports raw or '
                                         f'qcow2, not {fmt!r}')
        self.verify()
        target = self._path(layout.export(fmt))
        root_chain.export(self.recorded(), fmt, target)
        return {'path': target, 'size': files.stat_path(target)['size']}

    def lacks_working_copy(self, listing):
        """Whether a running volume has lost its overlay: only a stop
        removes it (see Manager.reconcile)."""
        in_place = (self.config.kind == 'persistent' and
                    self.config.revisions_to_keep == -1)
        return listing.overlay is None and not in_place

    def needs_attention(self, listing, running):
        recorded = {generation(p) for p, _ in self.config.chain}
        keep = max(self.config.revisions_to_keep, 0)
        return bool(listing.exports or listing.uploads or
                    listing.import_target is not None or
                    (self.config.kind == 'persistent' and
                     (set(listing.layers) != recorded or
                      len(self.config.chain) - 1 > keep)) or
                    (not running and listing.overlay is not None))

    # -- what the disk says ------------------------------------------------

    def revisions(self):
        listing = self.listing()
        result = []
        for path, fmt in reversed(self.recorded()[1:]):
            entry = listing.layers.get(generation(path))
            if entry is None:
                continue
            moment = datetime.datetime.fromtimestamp(
                entry['mtime_ns'] / 1e9, datetime.timezone.utc)
            result.append({'id': generation(path),
                           'timestamp': moment.strftime('%Y-%m-%dT%H:%M:%SZ'),
                           'size': self._virtual_size(path, fmt)})
        return result

    def state(self, listings=None):
        listing = self.listing(listings)
        kind = self.config.kind
        overlay = listing.overlay
        path = self._path(overlay['name']) if overlay else None
        fmt = 'qcow2'
        outdated = False
        damaged = None
        size = self.config.size
        try:
            if kind == 'persistent' and self.config.chain:
                top, top_fmt = self._top()
                if overlay is None:
                    path, fmt = top, top_fmt
                size = self._virtual_size(top, top_fmt) if \
                    generation(top) in listing.layers else 0
            elif kind == 'snapshot':
                source = self.pool.volume(self.config.source)
                top, top_fmt = source._top()
                outdated = overlay is not None and \
                    listing.overlay_source_gen != generation(top)
                size = self._virtual_size(top, top_fmt)
        except root_errors.PrivilegedError as err:
            # One damaged image must not break listings of everything else:
            # report it, with the recorded size.
            damaged = str(err)
        usage = sum(e['allocated'] for e in listing.layers.values())
        if overlay is not None:
            usage += overlay['allocated']
        return {'size': size, 'usage': usage, 'format': fmt,
                'is_dirty': kind == 'persistent' and overlay is not None,
                'is_outdated': outdated, 'path': path,
                'import_pending': bool(listing.import_target or
                                      listing.uploads),
                'has_working_copy': overlay is not None,
                'damaged': damaged}

    def chain(self):
        """The attached image and everything below it, top first."""
        listing = self.listing()
        kind = self.config.kind
        if kind == 'persistent':
            below = self.recorded()
        elif kind == 'snapshot' and listing.overlay is not None:
            source = self.pool.volume(self.config.source).recorded()
            gens = [generation(p) for p, _ in source]
            start = gens.index(listing.overlay_source_gen) \
                if listing.overlay_source_gen in gens else 0
            below = source[start:]
        else:
            below = []
        if listing.overlay is not None and not (
                kind == 'persistent' and self.config.revisions_to_keep == -1):
            return [[self._path(listing.overlay['name']), 'qcow2']] + below
        return below


def _committed_chain(volume):
    """A clone source's committed data as a chain, top first."""
    if isinstance(volume, Qcow2Volume):
        volume.verify()
        return volume.recorded()
    if isinstance(volume, directory.DirectoryVolume):
        _, entry = volume._committed(volume.listing())
        return [[volume._path(entry['name']), 'raw']]
    raise errors.NotSupported(
        f'pool {volume.pool.name} (driver {volume.pool.driver}) cannot be '
        f'cloned into a qcow2 pool')


class Qcow2Pool(directory.DirectoryPool):
    driver = 'qcow2'
    volume_class = Qcow2Volume
    capabilities = dataclasses.replace(
        base.Capabilities(), volume_formats=('raw', 'qcow2'), chains=True,
        revert=True, import_formats=image_formats.FORMATS,
        export_formats=qemu.OUTPUT_FORMATS, descriptors=True)

    def listings(self):
        try:
            tree = files.list_tree(self.dir_path, 2)
        except root_errors.NotFound:
            return {}
        return {vid: parse(entries) for vid, entries in tree.items()}

    def layers_in_use(self):
        """Layers that running snapshot overlays of this pool read through
        (their direct backing files)."""
        used = set()
        for vid, listing in self.listings().items():
            if listing.overlay is not None and \
                    listing.overlay_source_gen is not None:
                overlay = f'{self.dir_path}/{vid}/{listing.overlay["name"]}'
                used.add(root_chain.layer(overlay, 'qcow2')['backing'])
        return used
