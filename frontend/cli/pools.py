"""volsep pool ..."""

from volsep.frontend.cli import app
from volsep.frontend.cli import base


def parse_options(pairs):
    options = []
    for pair in pairs or ():
        key, sep, value = pair.partition('=')
        if not sep or not key:
            raise app.OperationError('InvalidArgument',
                                     f'option {pair!r} is not key=value')
        options.append([key, value])
    return options


def _add_options(parser):
    parser.add_argument('-o', '--option', action='append', dest='options',
                        metavar='KEY=VALUE', help='driver option')


class PoolList(base.Lister):
    """List pools."""

    def take_action(self, args):
        return self.rows(self.client().call('admin.pool.List'),
                         ('name', 'driver'))


class PoolDrivers(base.Lister):
    """List pool drivers and their options."""

    def take_action(self, args):
        drivers = self.client().call('admin.pool.ListDrivers')
        return self.rows(drivers, ('driver', 'options'))


class PoolInfo(base.ShowOne):
    """Show a pool: size, usage, options."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name')
        return parser

    def take_action(self, args):
        return self.fields(self.client().call('admin.pool.Info',
                                              pool=args.name))


class PoolAdd(base.ShowOne):
    """Add a pool."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name')
        parser.add_argument('driver')
        _add_options(parser)
        return parser

    def take_action(self, args):
        return self.fields(self.client().call(
            'admin.pool.Add', pool=args.name, driver=args.driver,
            options=parse_options(args.options)))


class PoolSet(base.ShowOne):
    """Change a pool's options."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name')
        _add_options(parser)
        return parser

    def take_action(self, args):
        return self.fields(self.client().call(
            'admin.pool.Set', pool=args.name,
            options=parse_options(args.options)))


class PoolRemove(base.ShowOne):
    """Remove an unused pool."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name')
        return parser

    def take_action(self, args):
        self.client().call('admin.pool.Remove', pool=args.name)
        return self.fields({'name': args.name, 'removed': True})


class PoolOrphans(base.Lister):
    """List what lies in a directory pool that no volume owns; with
    --remove [PATH ...], delete it (all of it, or the PATHs named)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name', help='pool to scan')
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
    """Record an orphan volume directory DOMAIN/VOLUME of a pool as the
    persistent volume DOMAIN:VOLUME."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name', help='pool holding the directory')
        parser.add_argument('volume', metavar='DOMAIN:VOLUME',
                            help='the orphan directory DOMAIN/VOLUME, '
                                 'addressed as a volume')
        return parser

    def take_action(self, args):
        return self.fields(self.client().call(
            'admin.pool.AdoptOrphan', pool=args.name, volume=args.volume))
