"""Staging directories: imports and exports in formats other than raw for
pools whose storage qemu-img cannot open (Ceph images, LVs).

qemu-img runs confined to files beneath the allowed roots, so such a pool
names a `staging_dir` there, and each volume gets a directory in it,
`DOMAIN+VOLUME`, only while an import or export needs one. An upload
lands in it, is inspected and converted to a raw file there by the root
side's qemu-img, and the driver copies that raw file into its storage
(`load`); an export is the committed content written out raw by the
driver (`dump`), then converted. Nothing in a staging directory outlives
the operation: at start-up whatever is left was cut short and goes.
"""

import os

from volsep.drivers import base
from volsep.drivers import errors
from volsep.drivers import layout
from volsep.privileged import errors as root_errors
from volsep.privileged import files
from volsep.privileged import qemu


def _directory(value):
    if value and (not value.startswith('/') or value.rstrip('/') != value
                  or os.path.normpath(value) != value):
        raise errors.InvalidArgument(
            f'staging_dir {value!r} must be absolute and normal, without a '
            f'trailing /')
    return value


def option(unreachable):
    """The pool option; ``unreachable`` says what qemu-img cannot open."""
    return base.Option(
        f'absolute directory beneath an allowed root for imports and '
        f'exports in formats other than raw (qemu-img converts them there: '
        f'it cannot open {unreachable}); none: raw only', default='',
        parse=_directory)


class Area:
    """A pool's staging directory (``directory`` may be '': none)."""

    def __init__(self, pool_name, directory):
        self.pool_name = pool_name
        self.directory = directory

    def setup(self):
        if self.directory:   # beneath an allowed root, root's own
            try:
                files.mkdir(self.directory, 0o700)
            except root_errors.AlreadyExists:
                files.list_dir(self.directory)   # a directory we may use

    def contents(self):
        """{'DOMAIN+VOLUME': [names]} of the volumes' directories."""
        if not self.directory:
            return {}
        try:
            tree = files.list_tree(self.directory, 1)
        except root_errors.NotFound:
            return {}
        return {key: [e['name'] for e in entries]
                for key, entries in tree.items()}

    def clear_all(self):
        """Remove every volume's directory; returns [(action, path)]."""
        done = []
        for key, names in sorted(self.contents().items()):
            self.volume(*key.split('+')).clear(names)
            done.append(('removed', f'{self.directory}/{key}'))
        return done

    def volume(self, domain, name):
        return VolumeArea(self, domain, name)


class VolumeArea:
    """One volume's staging directory, DOMAIN+VOLUME (names never hold
    a +)."""

    def __init__(self, area, domain, name):
        self.area = area
        self.key = f'{domain}+{name}'
        self.address = f'{domain}:{name}'

    def path(self, name=None):
        if not self.area.directory:
            raise errors.InvalidArgument(
                f'pool {self.area.pool_name} has no staging_dir: imports '
                f'and exports in formats other than raw need one')
        base_path = f'{self.area.directory}/{self.key}'
        return base_path if name is None else f'{base_path}/{name}'

    def names(self):
        """What the directory holds; None if there is none."""
        if not self.area.directory:
            return None
        try:
            return [e['name'] for e in files.list_dir(self.path())]
        except root_errors.NotFound:
            return None

    def clear(self, names):
        """Remove ``names`` and the directory (None: there is none)."""
        if names is None:
            return
        for name in names:
            files.unlink(self.path(name))
        files.rmdir(self.path())

    def _ensure(self, names):
        if names is None:
            files.mkdir(self.path(), 0o700)

    def upload_pending(self, names):
        return any(layout.is_upload(n) for n in names or ())

    def begin_import(self, size, fmt, names):
        """The file a ``size``-byte upload in ``fmt`` goes into."""
        path = self.path(layout.upload(fmt))
        self._ensure(names)
        files.create(path, size)
        return path

    def write(self, fmt, offset, data):
        return files.write_at(self.path(layout.upload(fmt)), offset, data)

    def end_import(self, success, fmt, names, load):
        """Convert the upload to raw and hand that file to ``load(path)``
        (if ``success``), then clear the directory. The root side's
        convert re-checks the upload before qemu-img reads it; the
        storage is touched only once the raw result is complete. If
        that fails, the caller ends the import unsuccessfully, which
        clears the directory."""
        upload = layout.upload(fmt)
        if upload not in (names or ()):
            raise errors.InvalidArgument(
                f'volume {self.address} has no {fmt} import pending')
        if success:
            raw = self.path(layout.IMPORT)
            qemu.convert(self.path(upload), fmt, raw, 'raw')
            load(raw)
        self.clear(self.names())

    def begin_export(self, fmt, names, dump):
        """An export in ``fmt``: ``dump(path)`` writes the committed
        content as a new raw file, which is converted; returns
        {'path', 'size'} of the result."""
        self._ensure(names)
        raw = self.path(layout.export())
        target = self.path(layout.export(fmt))
        try:
            dump(raw)
            qemu.convert(raw, 'raw', target, fmt)
        finally:
            try:
                files.unlink(raw)
            except root_errors.NotFound:
                pass
        return {'path': target, 'size': files.stat_path(target)['size']}

    def is_export(self, path):
        name = path.rpartition('/')[2]
        return bool(self.area.directory) and path == self.path(name) and \
            layout.is_export(name)

    def read(self, path, offset, length):
        return files.read_at(path, offset, length)

    def end_export(self, path):
        files.unlink(path)
        if self.names() == []:
            files.rmdir(self.path())
