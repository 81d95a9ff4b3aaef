"""File names of a directory-pool volume: all of its state, and nothing
that needs a disk to compute.

Each volume owns one directory, POOL/DOMAIN/VOLUME/, so no name of one
volume can ever be mistaken for another's. Inside it:

    c<N>.img           committed image, generation N (the highest N wins)
    r<N>@<UTC>.img     revision: generation N, retired at UTC time
    w.img              working copy of a running persistent/volatile volume
    w@<G>.img          working copy of a snapshot started from source gen G
    i.img              pending import target
    i.<FORMAT>         pending import in a foreign format (qcow2, vmdk, vhd,
                       vhdx, vdi), converted into i.img when it ends
    x-<hex>.img        export snapshot (x-<hex>.qcow2 when exported as qcow2)

A volume being removed is first renamed, whole, to POOL/DOMAIN/VOLUME@removing
(no volume name holds an '@'), and only then emptied; start-up finishes or
undoes a removal that was interrupted (see DirectoryPool.finish_removals).

Generations only grow: a new committed image always gets the next number
above every committed image and revision ever seen, so revision ids never
repeat.
"""

import dataclasses
import datetime
import re
import secrets

_COMMITTED = re.compile(r'c([0-9]{1,18})\.img')
_REVISION = re.compile(r'r([0-9]{1,18})@([0-9]{8}T[0-9]{6}Z)\.img')
_WORKING = re.compile(r'w(?:@([0-9]{1,18}))?\.img')
_EXPORT = re.compile(r'x-[0-9a-f]{16}\.(?:img|qcow2)')
_UPLOAD = re.compile(r'i\.(qcow2|vmdk|vhd|vhdx|vdi)')
IMPORT = 'i.img'


@dataclasses.dataclass
class Revision:
    id: int
    stamp: str
    entry: dict

    @property
    def timestamp(self):
        moment = datetime.datetime.strptime(self.stamp, '%Y%m%dT%H%M%SZ')
        return moment.strftime('%Y-%m-%dT%H:%M:%SZ')


@dataclasses.dataclass
class Listing:
    committed: list = dataclasses.field(default_factory=list)  # (gen, entry)
    revisions: list = dataclasses.field(default_factory=list)  # Revision
    working: object = None          # entry
    working_source_gen: object = None
    import_target: object = None    # entry
    uploads: list = dataclasses.field(default_factory=list)
    exports: list = dataclasses.field(default_factory=list)
    unknown: list = dataclasses.field(default_factory=list)

    @property
    def current(self):
        """(generation, entry) of the committed image, or None."""
        return max(self.committed, key=lambda c: c[0], default=None)

    @property
    def next_generation(self):
        used = [g for g, _ in self.committed] + [r.id for r in self.revisions]
        return max(used, default=0) + 1


def entries(listing):
    """The directory entries ``listing`` was parsed from."""
    return ([entry for _, entry in listing.committed] +
            [r.entry for r in listing.revisions] +
            [e for e in (listing.working, listing.import_target) if e] +
            listing.uploads + listing.exports + listing.unknown)


def after(listing, renames=(), unlinks=(), added=()):
    """The listing once ``renames`` ((old, new) names), ``unlinks`` and
    the new entries ``added`` have changed the directory: what volsep's
    own change leaves, known without reading the directory again (entry
    fields other than names keep their old values)."""
    moved, gone = dict(renames), set(unlinks)
    renamed = [dict(e, name=moved.get(e['name'], e['name']))
               for e in entries(listing)]
    return parse([e for e in renamed if e['name'] not in gone] +
                 list(added))


def parse(entries):
    listing = Listing()
    for entry in entries:
        name = entry['name']
        if entry['type'] != 'file':
            listing.unknown.append(entry)
        elif m := _COMMITTED.fullmatch(name):
            listing.committed.append((int(m[1]), entry))
        elif m := _REVISION.fullmatch(name):
            listing.revisions.append(Revision(int(m[1]), m[2], entry))
        elif m := _WORKING.fullmatch(name):
            listing.working = entry
            listing.working_source_gen = int(m[1]) if m[1] else None
        elif name == IMPORT:
            listing.import_target = entry
        elif _UPLOAD.fullmatch(name):
            listing.uploads.append(entry)
        elif _EXPORT.fullmatch(name):
            listing.exports.append(entry)
        else:
            listing.unknown.append(entry)
    listing.committed.sort(key=lambda c: c[0])
    listing.revisions.sort(key=lambda r: r.id)
    return listing


def committed(generation):
    return f'c{generation}.img'


def revision(generation, now=None):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return f'r{generation}@{now.strftime("%Y%m%dT%H%M%SZ")}.img'


def working(source_generation=None):
    if source_generation is None:
        return 'w.img'
    return f'w@{source_generation}.img'


def upload(fmt):
    """Where an import in ``fmt`` lands before conversion."""
    if fmt == 'raw':
        return IMPORT
    name = f'i.{fmt}'
    if not _UPLOAD.fullmatch(name):
        raise ValueError(f'no upload name for format {fmt!r}')
    return name


def export(fmt='raw'):
    return f'x-{secrets.token_hex(8)}.{"img" if fmt == "raw" else fmt}'


def is_upload(name):
    return bool(_UPLOAD.fullmatch(name))


def is_export(name):
    return bool(_EXPORT.fullmatch(name))


_ASIDE = '@removing'


def aside(volume_name):
    """The name a volume's directory is renamed to while it is removed."""
    return volume_name + _ASIDE


def aside_owner(name):
    """The volume name an aside directory belonged to, or None."""
    if name.endswith(_ASIDE) and name.count('@') == 1 and \
            len(name) > len(_ASIDE):
        return name[:-len(_ASIDE)]
    return None
