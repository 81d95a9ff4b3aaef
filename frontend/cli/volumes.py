"""volsep volume ..."""

import argparse
import contextlib
import os
import select
import signal
import stat
import sys
import tempfile

from volsep.frontend.cli import app
from volsep.frontend.cli import base
from volsep.frontend.cli import progress
from volsep.frontend.cli import units
from volsep.privileged import image_formats
from volsep.privileged import zeros

LIST_COLUMNS = ('domain', 'name', 'pool', 'vid', 'kind', 'size')


def _address(parser, help='the volume'):
    parser.add_argument('volume', metavar='DOMAIN:VOLUME', help=help)


class _VolumeShow(base.ShowOne):
    """Shows a volume as volume info does, with its vid as the volume is
    addressed on the command line (DOMAIN:VOLUME)."""

    shows_sizes = True

    @staticmethod
    def fields(record):
        return base.ShowOne.fields(_as_addressed(record))


def _as_addressed(record):
    if 'vid' not in record:
        return record
    return dict(record, vid=f"{record['domain']}:{record['name']}")


def _progress_option(parser):
    parser.add_argument(
        '--progress', action=argparse.BooleanOptionalAction,
        help='show the progress on stderr (default: only when stderr is a '
             'terminal)')


def _check_not_empty(size):
    # `--size ""` (an unset shell variable) is a mistake, never 0 bytes.
    if size is not None and not size.strip():
        raise app.UsageError('--size is empty')


def _source_size(f, name):
    """The bytes left to read in ``f``, if it is a regular file or a block
    device; anything else (a pipe, /dev/zero, a socket) cannot tell."""
    fd = f.fileno()
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        here = os.lseek(fd, 0, os.SEEK_CUR)
        end = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, here, os.SEEK_SET)
        return end - here
    raise app.UsageError(f'{name} is not a regular file or block device, '
                         f'so its size cannot be known: give --size')


class VolumeList(base.Lister):
    """List volumes, optionally of one pool or some domains."""

    shows_sizes = True

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('--pool', metavar='POOL',
                            help="only this pool's volumes")
        parser.add_argument('domains', nargs='*', metavar='DOMAIN',
                            help="only these domains' volumes (default: "
                                 "every domain's)")
        return parser

    def take_action(self, args):
        volumes = self.client().call('admin.vm.volume.List', pool=args.pool,
                                     domains=args.domains)
        return self.rows(map(_as_addressed, volumes), LIST_COLUMNS)


class VolumeCreate(_VolumeShow):
    """Create a volume (and its domain, if new)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser, 'the new volume')
        parser.add_argument('--pool', required=True, metavar='POOL',
                            help='the pool to create it in')
        parser.add_argument('--size', metavar='SIZE',
                            help='its size, in bytes or with a unit (10G, '
                                 '512MiB); required unless --kind snapshot')
        parser.add_argument('--kind', default='persistent',
                            choices=('persistent', 'volatile', 'snapshot'),
                            help='persistent (committed on stop, with '
                                 'revisions), volatile (emptied on every '
                                 'start) or snapshot (a fresh copy of '
                                 '--source on every start); default: '
                                 'persistent')
        parser.add_argument('--source', metavar='DOMAIN:VOLUME',
                            help='the volume a snapshot copies')
        parser.add_argument('--revisions-to-keep', type=int, metavar='N',
                            help="revisions kept on commit (default: the "
                                 "pool's revisions_to_keep)")
        parser.add_argument('--read-only', action='store_true',
                            help='attach it read-only (rw false)')
        parser.add_argument('--format', choices=('raw', 'qcow2'),
                            help="the committed image's format (default: "
                                 "the pool's native one)")
        return parser

    def take_action(self, args):
        _check_not_empty(args.size)
        if args.size is None and args.kind != 'snapshot':
            raise app.UsageError(f'--size is required for a {args.kind} '
                                 f'volume')
        size = units.parse_size(args.size or '0')
        info = self.client().call(
            'admin.vm.volume.Create', volume=args.volume, pool=args.pool,
            size=size, kind=args.kind,
            source=args.source, revisions_to_keep=args.revisions_to_keep,
            rw=not args.read_only, format=args.format)
        return self.fields(info)


class VolumeInfo(_VolumeShow):
    """Show a volume, or the value of one of its properties.

    With PROPERTY and no -f, only the value is printed."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('property', nargs='?', metavar='PROPERTY',
                            help='one field of the volume (size, path, '
                                 'rw, ...): print only its value')
        return parser

    def default_formatter(self, parsed_args):
        # `volume info VOL size` is for scripts, as qvm-volume's is.
        if parsed_args.property is not None:
            return 'value'
        return super().default_formatter(parsed_args)

    def take_action(self, args):
        info = _as_addressed(self.client().call('admin.vm.volume.Info',
                                                volume=args.volume))
        if args.property is None:
            return self.fields(info)
        if args.property not in info:
            raise app.UsageError(f'no property {args.property!r}; '
                                 f'properties: {", ".join(info)}')
        return (args.property,), (info[args.property],)


class VolumeSet(_VolumeShow):
    """Set rw or revisions_to_keep."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('property', choices=('rw', 'revisions_to_keep'),
                            metavar='rw|revisions_to_keep',
                            help='the property to set')
        parser.add_argument('value', metavar='VALUE',
                            help='yes/no (or true/false) for rw; an integer '
                                 '>= -1 for revisions_to_keep')
        return parser

    def take_action(self, args):
        return self.fields(self.client().call(
            f'admin.vm.volume.Set.{args.property}', volume=args.volume,
            value=args.value))


class VolumeResize(_VolumeShow):
    """Resize a volume; shrinking needs --force."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('size', metavar='SIZE',
                            help='the new size, in bytes or with a unit')
        parser.add_argument('--force', action='store_true',
                            help='allow shrinking (the data beyond SIZE '
                                 'is lost)')
        return parser

    def take_action(self, args):
        size = units.parse_size(args.size)
        return self.fields(self.client().call(
            'admin.vm.volume.Resize', volume=args.volume, size=size,
            force=args.force))


class VolumeRevisions(base.Lister):
    """List revisions, oldest first."""

    shows_sizes = True

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        return parser

    def take_action(self, args):
        revisions = self.client().call('admin.vm.volume.ListSnapshots',
                                       volume=args.volume)
        return self.rows(revisions, ('id', 'timestamp', 'size'))


class VolumeRevert(_VolumeShow):
    """Revert to a revision (default: the latest)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('revision', nargs='?', metavar='REVISION',
                            help="a revision id from 'volume revisions' "
                                 "(default: the latest)")
        return parser

    def take_action(self, args):
        return self.fields(self.client().call(
            'admin.vm.volume.Revert', volume=args.volume,
            revision=args.revision))


class VolumeImport(_VolumeShow):
    """Replace a stopped volume's content with a file or stdin."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('path', metavar='PATH|-',
                            help='file or block device to read, or - for '
                                 'stdin')
        parser.add_argument(
            '--size', metavar='SIZE',
            help='bytes to read (units allowed: 10G); needed unless PATH '
                 '(or stdin) is a regular file or block device. Data '
                 'longer than this is refused, not cut')
        parser.add_argument(
            '--format', default='raw', choices=image_formats.FORMATS,
            help='format of the data; anything but raw is inspected and '
                 'converted, and refused as UnsafeImage if it is not '
                 'exactly a self-contained image of that format')
        parser.add_argument('--force', action='store_true',
                            help='allow the import to shrink the volume')
        _progress_option(parser)
        return parser

    def take_action(self, args):
        _check_not_empty(args.size)
        size = None if args.size is None else units.parse_size(args.size)
        if args.path == '-':
            source, name = sys.stdin.buffer, 'stdin'
        else:
            try:
                source = open(args.path, 'rb')
            except OSError as err:
                raise app.OperationError(
                    'InvalidArgument', f'{args.path}: {err.strerror}')
            name = args.path
        with source:
            if size is None:
                size = _source_size(source, name)
            with progress.transfer(f'import {args.volume}',
                                   args.progress) as shown:
                shown.start(size)
                info = self.client().import_stream(
                    args.volume, source, size, args.format, shown.advance,
                    force=args.force, on_sent=shown.committing,
                    hand_over=True)
        return self.fields(info)


class _SparseSink:
    """Writes a new file front to back, seeking past its all-zero blocks
    so that they stay holes (the root side writes imports alike)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        view = memoryview(data)
        for start, end, zero in zeros.runs(data):
            if zero:
                self.f.seek(end - start, os.SEEK_CUR)
            else:
                self.f.write(view[start:end])

    def finish(self):
        # A trailing hole was only sought past: give the file its length.
        self.f.truncate(self.f.tell())


class _Terminated(BaseException):
    """SIGTERM or SIGHUP during an export: unwind, removing the partial
    file, as Ctrl-C does."""


@contextlib.contextmanager
def _unwind_on_signals():
    def handler(signum, frame):
        raise _Terminated(signum)
    previous = {sig: signal.signal(sig, handler)
                for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except _Terminated as err:
        raise app.OperationError(
            'StorageError', f'export interrupted by '
            f'{signal.Signals(err.args[0]).name}; nothing was written') \
            from None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reader_gone(fd):
    """Whether the pipe on ``fd`` has lost its reader (`| head`)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _end_as_by_sigpipe():
    """End as a byte-stream export to a closed pipe does (and as cat
    does): killed by SIGPIPE, with nothing on stderr, whether the root
    side or this process found the reader gone."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)


class VolumeExport(base.ShowOne):
    """Write a volume's committed content to a file or stdout.

    A file is written beside the target and renamed into place only once
    complete, so a failed or interrupted export leaves the target as it
    was; an existing file is replaced only with --force."""

    shows_sizes = True

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('path', metavar='PATH|-',
                            help='file to write, or - for stdout (which '
                                 'then carries the image and nothing else)')
        parser.add_argument('--format', default='raw',
                            choices=('raw', 'qcow2'),
                            help='format to write (default: raw, sparse '
                                 'in a file)')
        parser.add_argument('--force', action='store_true',
                            help='replace PATH if it exists (atomically, '
                                 'once the export is complete)')
        _progress_option(parser)
        return parser

    def stdout_is_data(self, parsed_args):
        return getattr(parsed_args, 'path', None) == '-'

    def produce_output(self, parsed_args, column_names, data):
        if self.stdout_is_data(parsed_args):
            return 0  # stdout has the image: no table, no {} after it
        return super().produce_output(parsed_args, column_names, data)

    def take_action(self, args):
        if args.path == '-':
            return self._to_stdout(args)
        real = os.path.realpath(args.path)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            st = None
        except OSError as err:
            raise app.OperationError('InvalidArgument',
                                     f'{args.path}: {err.strerror}')
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise app.OperationError('InvalidArgument',
                                     f'{args.path} is a directory')
        if st is not None and not args.force and \
                (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise app.OperationError(
                'InvalidArgument', f'{args.path} exists; use --force to '
                f'replace it')
        if st is not None and not stat.S_ISREG(st.st_mode):
            # A device or pipe cannot be replaced by a rename: written in
            # place, with zeros written out (no holes in a device).
            size = self._in_place(args, real)
        else:
            size = self._replace(args, real, st)
        return self.fields({'volume': args.volume, 'path': args.path,
                            'size': size, 'format': args.format})

    def _to_stdout(self, args):
        out = sys.stdout.buffer
        if out.isatty():
            raise app.UsageError('refusing to write an image to a terminal; '
                                 'redirect stdout or give a PATH')
        out.flush()
        # A pipe can be handed to volsepd; a file stdout may be opened
        # for appending or be anywhere, so it gets the bytes.
        pipe = stat.S_ISFIFO(os.fstat(out.fileno()).st_mode)
        try:
            with progress.transfer(f'export {args.volume}',
                                   args.progress) as shown:
                self.client().export_stream(
                    args.volume, out, args.format, shown.advance,
                    on_size=shown.start, hand_over=out if pipe else None)
        except Exception:
            if pipe and _reader_gone(out.fileno()):
                _end_as_by_sigpipe()
            raise
        out.flush()
        return (), ()

    def _in_place(self, args, real):
        try:
            target = open(real, 'wb')
        except OSError as err:
            raise app.OperationError('InvalidArgument',
                                     f'{args.path}: {err.strerror}')
        with target, _unwind_on_signals():
            with progress.transfer(f'export {args.volume}',
                                   args.progress) as shown:
                return self.client().export_stream(
                    args.volume, target, args.format, shown.advance,
                    on_size=shown.start)

    def _replace(self, args, real, st):
        directory, base_name = os.path.split(real)
        try:
            fd, temp = tempfile.mkstemp(prefix=f'.{base_name}.',
                                        suffix='.volsep-export',
                                        dir=directory)
        except OSError as err:
            raise app.OperationError('InvalidArgument',
                                     f'{args.path}: {err.strerror}')
        try:
            with _unwind_on_signals(), \
                    progress.transfer(f'export {args.volume}',
                                      args.progress) as shown:
                with os.fdopen(fd, 'wb') as target:
                    sink = _SparseSink(target)
                    size = self.client().export_stream(
                        args.volume, sink, args.format, shown.advance,
                        on_size=shown.start, hand_over=target)
                    # Flushing a large file can take long: say so.
                    shown.committing()
                    sink.finish()
                    target.flush()
                    os.fsync(target.fileno())
                if st is not None:
                    mode = stat.S_IMODE(st.st_mode)
                else:
                    umask = os.umask(0)
                    os.umask(umask)
                    mode = 0o666 & ~umask
                os.chmod(temp, mode)
                self._publish(args, temp, real)
                temp = None
                _fsync_dir(directory)
        finally:
            if temp is not None:
                try:
                    os.unlink(temp)
                except FileNotFoundError:
                    pass
        return size

    @staticmethod
    def _publish(args, temp, real):
        if args.force:
            os.replace(temp, real)
            return
        # Without --force, a file that appeared meanwhile is not replaced
        # either: link() refuses an existing name.
        try:
            os.link(temp, real)
        except FileExistsError:
            raise app.OperationError(
                'InvalidArgument', f'{args.path} exists; use --force to '
                f'replace it') from None
        except OSError:  # no hard links here: check, then rename
            if os.path.lexists(real):
                raise app.OperationError(
                    'InvalidArgument', f'{args.path} exists; use --force '
                    f'to replace it') from None
            os.rename(temp, real)
            return
        os.unlink(temp)


class VolumeClone(_VolumeShow):
    """Make a volume a copy of another (instant in reflink and rbd pools)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('source', metavar='SRC_DOMAIN:VOLUME',
                            help='the volume to copy')
        parser.add_argument('target', metavar='DST_DOMAIN:VOLUME',
                            help='the existing, stopped volume that '
                                 'becomes the copy')
        return parser

    def take_action(self, args):
        client = self.client()
        token = client.call('admin.vm.volume.CloneFrom',
                            volume=args.source)['token']
        return self.fields(client.call('admin.vm.volume.CloneTo',
                                       volume=args.target, token=token))


class VolumeClear(_VolumeShow):
    """Replace a volume's content with zeros (previous kept as revision)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        return parser

    def take_action(self, args):
        return self.fields(self.client().call('admin.vm.volume.Clear',
                                              volume=args.volume))


class VolumeRelease(base.ShowOne):
    """Free a shared (rbd) volume whose owning host died: fence that host
    (blocklist its Ceph client) and break its ownership."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        parser.add_argument('--force', action='store_true',
                            help='fence the owner (needed: a live owner '
                                 'loses the volume)')
        return parser

    def take_action(self, args):
        result = self.client().call('admin.vm.volume.Release',
                                    volume=args.volume, force=args.force)
        fenced = result['fenced']
        return (('volume', 'fenced'),
                (result['volume'], fenced[0] if fenced else None))


class VolumeRemove(base.ShowOne):
    """Remove a volume and every file it has."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        _address(parser)
        return parser

    def take_action(self, args):
        self.client().call('admin.vm.volume.Remove', volume=args.volume)
        return self.fields({'volume': args.volume, 'removed': True})
