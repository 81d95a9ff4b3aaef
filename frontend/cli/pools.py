"""volsep pool ..."""

from cliff import columns

from volsep.frontend.cli import app
from volsep.frontend.cli import base


def parse_options(pairs):
    options = []
    for pair in pairs or ():
        key, sep, value = pair.partition('=')
        if not sep or not key:
            raise app.UsageError(f'option {pair!r} is not KEY=VALUE')
        options.append([key, value])
    return options


def _add_options(parser):
    parser.add_argument('-o', '--option', action='append', dest='options',
                        metavar='KEY=VALUE',
                        help='a driver option (repeatable); sizes take '
                             'units (max_volume_size=10G); '
                             "'volsep pool drivers' lists each driver's")


class PoolList(base.Lister):
    """List pools."""

    def take_action(self, args):
        return self.rows(self.client().call('admin.pool.List'),
                         ('name', 'driver'))


class _DriverOptions(columns.FormattableColumn):
    """A driver's options: {name: description} for programs, one
    `name: description` line each for people."""

    def human_readable(self):
        return '\n'.join(f'{name}: {text}'
                         for name, text in sorted(self._value.items()))


class PoolDrivers(base.Lister):
    """List pool drivers and their options."""

    def take_action(self, args):
        drivers = self.client().call('admin.pool.ListDrivers')
        return ('driver', 'options'), [
            (d['driver'], _DriverOptions(d['options'])) for d in drivers]


class PoolInfo(base.ShowOne):
    """Show a pool: size, usage, options."""

    shows_sizes = True

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name', metavar='POOL', help='the pool to show')
        return parser

    def take_action(self, args):
        return self.fields(self.client().call('admin.pool.Info',
                                              pool=args.name))


class PoolAdd(base.ShowOne):
    """Add a pool."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name', metavar='POOL',
                            help='name of the new pool')
        parser.add_argument('driver', metavar='DRIVER',
                            help="its driver ('volsep pool drivers' "
                                 "lists them)")
        _add_options(parser)
        return parser

    def take_action(self, args):
        options = parse_options(args.options)
        return self.fields(self.client().call(
            'admin.pool.Add', pool=args.name, driver=args.driver,
            options=options))


class PoolSet(base.ShowOne):
    """Change a pool's options."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name', metavar='POOL', help='the pool to change')
        _add_options(parser)
        return parser

    def take_action(self, args):
        options = parse_options(args.options)
        return self.fields(self.client().call(
            'admin.pool.Set', pool=args.name, options=options))


class PoolRemove(base.ShowOne):
    """Remove an unused pool."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name', metavar='POOL', help='the pool to remove')
        return parser

    def take_action(self, args):
        self.client().call('admin.pool.Remove', pool=args.name)
        return self.fields({'name': args.name, 'removed': True})


class PoolOrphans(base.Lister):
    """List what lies in a directory pool that no volume owns.

    With --remove [PATH ...], delete it (all of it, or the PATHs
    named)."""

    shows_sizes = True

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name', metavar='POOL', help='pool to scan')
        parser.add_argument('--remove', nargs='*', metavar='PATH',
                            help='delete the orphans listed: all of them, '
                                 'or only the PATHs named (relative to the '
                                 'pool, as listed); each must be in the '
                                 'current list')
        return parser

    def take_action(self, args):
        client = self.client()
        if args.remove is not None:
            removed = client.call('admin.pool.RemoveOrphans', pool=args.name,
                                  paths=args.remove or None)
            return self.rows(removed, ('path', 'removed'))
        orphans = client.call('admin.pool.ListOrphans', pool=args.name)
        return self.rows(orphans, ('path', 'type', 'size'))


class PoolAdopt(base.ShowOne):
    """Record an orphan volume directory as a persistent volume.

    The directory DOMAIN/VOLUME of the pool becomes DOMAIN:VOLUME."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name', metavar='POOL',
                            help='pool holding the directory')
        parser.add_argument('volume', metavar='DOMAIN:VOLUME',
                            help='the orphan directory DOMAIN/VOLUME, '
                                 'addressed as a volume')
        return parser

    def take_action(self, args):
        return self.fields(self.client().call(
            'admin.pool.AdoptOrphan', pool=args.name, volume=args.volume))
