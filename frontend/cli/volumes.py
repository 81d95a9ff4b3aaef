"""volsep volume ..."""

import os
import sys

from volsep.frontend.cli import app
from volsep.frontend.cli import base
from volsep.frontend.cli import progress
from volsep.frontend.cli import units
from volsep.privileged import images

LIST_COLUMNS = ('domain', 'name', 'pool', 'vid', 'kind', 'size')
ZERO_CHUNK = bytes(1 << 20)


def _address(parser):
    parser.add_argument('volume', metavar='DOMAIN:VOLUME')


class VolumeList(base.Lister):
    """List volumes, optionally of one pool or some domains."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('--pool')
        parser.add_argument('domains', nargs='*', metavar='DOMAIN')
        return parser

    def take_action(self, args):
        volumes = self.client().call('admin.vm.volume.List', pool=args.pool,
                                     domains=args.domains)
        return self.rows(volumes, LIST_COLUMNS)


class VolumeCreate(base.ShowOne):
    """Create a volume (and its domain, if new)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('--pool', required=True)
        parser.add_argument('--size', help='required unless --kind snapshot')
        parser.add_argument('--kind', default='persistent',
                            choices=('persistent', 'volatile', 'snapshot'))
        parser.add_argument('--source', metavar='DOMAIN:VOLUME')
        parser.add_argument('--revisions-to-keep', type=int)
        parser.add_argument('--read-only', action='store_true')
        parser.add_argument('--format', choices=('raw', 'qcow2'),
                            help="the committed image's format (default: "
                                 "the pool's native one)")
        return parser

    def take_action(self, args):
        if args.size is None and args.kind != 'snapshot':
            raise app.OperationError('InvalidArgument',
                                     f'--size is required for a {args.kind} '
                                     f'volume')
        info = self.client().call(
            'admin.vm.volume.Create', volume=args.volume, pool=args.pool,
            size=units.parse_size(args.size or '0'), kind=args.kind,
            source=args.source, revisions_to_keep=args.revisions_to_keep,
            rw=not args.read_only, format=args.format)
        return self.fields(info)


class VolumeInfo(base.ShowOne):
    """Show a volume, or one of its properties."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('property', nargs='?')
        return parser

    def take_action(self, args):
        info = self.client().call('admin.vm.volume.Info', volume=args.volume)
        if args.property is None:
            return self.fields(info)
        if args.property not in info:
            raise app.OperationError(
                'InvalidArgument', f'no property {args.property!r}; '
                f'properties: {", ".join(info)}')
        return (args.property,), (info[args.property],)


class VolumeSet(base.ShowOne):
    """Set rw or revisions_to_keep."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('property', choices=('rw', 'revisions_to_keep'))
        parser.add_argument('value')
        return parser

    def take_action(self, args):
        return self.fields(self.client().call(
            f'admin.vm.volume.Set.{args.property}', volume=args.volume,
            value=args.value))


class VolumeResize(base.ShowOne):
    """Resize a volume; shrinking needs --force."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('size')
        parser.add_argument('--force', action='store_true')
        return parser

    def take_action(self, args):
        return self.fields(self.client().call(
            'admin.vm.volume.Resize', volume=args.volume,
            size=units.parse_size(args.size), force=args.force))


class VolumeRevisions(base.Lister):
    """List revisions, oldest first."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        return parser

    def take_action(self, args):
        revisions = self.client().call('admin.vm.volume.ListSnapshots',
                                       volume=args.volume)
        return self.rows(revisions, ('id', 'timestamp', 'size'))


class VolumeRevert(base.ShowOne):
    """Revert to a revision (default: the latest)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('revision', nargs='?')
        return parser

    def take_action(self, args):
        return self.fields(self.client().call(
            'admin.vm.volume.Revert', volume=args.volume,
            revision=args.revision))


class VolumeImport(base.ShowOne):
    """Replace a stopped volume's content with a file or stdin."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('path', metavar='PATH|-')
        parser.add_argument('--size', help='bytes to read (needed for -)')
        parser.add_argument(
            '--format', default='raw', choices=images.FORMATS,
            help='format of the data; anything but raw is inspected and '
                 'converted, and refused as UnsafeImage if it is not '
                 'exactly a self-contained image of that format')
        return parser

    def take_action(self, args):
        if args.path == '-':
            if args.size is None:
                raise app.OperationError('InvalidArgument',
                                         'importing from - needs --size')
            source, size = sys.stdin.buffer, units.parse_size(args.size)
        else:
            try:
                source = open(args.path, 'rb')
            except OSError as err:
                raise app.OperationError(
                    'InvalidArgument', f'{args.path}: {err.strerror}')
            size = (units.parse_size(args.size) if args.size else
                    os.fstat(source.fileno()).st_size)
        with progress.bar(size, f'import {args.volume}') as update:
            info = self.client().import_stream(args.volume, source, size,
                                               args.format, update)
        return self.fields(info)


class _SparseSink:
    """Writes a file, turning all-zero megabytes into holes."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        view = memoryview(data)
        for start in range(0, len(view), len(ZERO_CHUNK)):
            piece = view[start:start + len(ZERO_CHUNK)]
            if piece == ZERO_CHUNK[:len(piece)]:
                self.f.seek(len(piece), os.SEEK_CUR)
            else:
                self.f.write(piece)

    def finish(self):
        self.f.truncate(self.f.tell())


class VolumeExport(base.ShowOne):
    """Write a volume's committed content to a file or stdout."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('path', metavar='PATH|-')
        parser.add_argument('--format', default='raw',
                            choices=('raw', 'qcow2'))
        return parser

    def take_action(self, args):
        client = self.client()
        if args.path == '-':
            size = client.export_stream(args.volume, sys.stdout.buffer,
                                        args.format)
            sys.stdout.buffer.flush()
            return (), ()
        try:
            target = open(args.path, 'wb')
        except OSError as err:
            raise app.OperationError('InvalidArgument',
                                     f'{args.path}: {err.strerror}')
        with target:
            sink = _SparseSink(target)
            with progress.bar(None, f'export {args.volume}') as update:
                size = client.export_stream(args.volume, sink, args.format,
                                            update)
            sink.finish()
        return self.fields({'volume': args.volume, 'path': args.path,
                            'size': size, 'format': args.format})


class VolumeClone(base.ShowOne):
    """Make a volume a copy of another (instant within a reflink pool)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('source', metavar='SRC_DOMAIN:VOLUME')
        parser.add_argument('target', metavar='DST_DOMAIN:VOLUME')
        return parser

    def take_action(self, args):
        client = self.client()
        token = client.call('admin.vm.volume.CloneFrom',
                            volume=args.source)['token']
        return self.fields(client.call('admin.vm.volume.CloneTo',
                                       volume=args.target, token=token))


class VolumeClear(base.ShowOne):
    """Replace a volume's content with zeros (previous kept as revision)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        return parser

    def take_action(self, args):
        return self.fields(self.client().call('admin.vm.volume.Clear',
                                              volume=args.volume))


class VolumeRemove(base.ShowOne):
    """Remove a volume and every file it has."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        return parser

    def take_action(self, args):
        self.client().call('admin.vm.volume.Remove', volume=args.volume)
        return self.fields({'volume': args.volume, 'removed': True})
