"""volsep chain ... and the libvirt XML commands."""

import sys

from volsep.frontend.cli import base


def _layers(chain):
    return [{'index': i, 'path': path, 'format': fmt}
            for i, (path, fmt) in enumerate(chain)]


class ChainValidate(base.Lister):
    """Compare a volume's recorded chain with its images' headers."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('volume', metavar='DOMAIN:VOLUME',
                            help='the volume whose chain to check')
        return parser

    def take_action(self, args):
        layers = self.client().call('admin.vm.volume.ChainValidate',
                                    volume=args.volume)
        return self.rows(layers, ('index', 'path', 'format'))


class ChainCorrect(base.Lister):
    """Rebuild a volume's chain record from its images.

    Anything that cannot be trusted is refused and the record left as it
    was."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('volume', metavar='DOMAIN:VOLUME',
                            help='the volume whose chain record to rebuild')
        return parser

    def take_action(self, args):
        result = self.client().call('admin.vm.volume.ChainCorrect',
                                    volume=args.volume)
        return self.rows(_layers(result['after']), ('index', 'path',
                                                    'format'))


class _Merge(base.Lister):
    method = None

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('volume', metavar='DOMAIN:VOLUME',
                            help='a stopped volume of a qcow2 pool')
        parser.add_argument('--top', type=int, required=True,
                            help='chain index of the top layer (0 = top)')
        parser.add_argument('--base', type=int, required=True,
                            help='chain index of the base layer')
        return parser

    def take_action(self, args):
        chain = self.client().call(self.method, volume=args.volume,
                                   top=args.top, base=args.base)
        return self.rows(_layers(chain), ('index', 'path', 'format'))


class ChainCommit(_Merge):
    """Offline block-commit: merge layers TOP..BASE-1 into BASE."""
    method = 'admin.vm.volume.ChainCommit'


class ChainPull(_Merge):
    """Offline block-pull: copy layers TOP+1..BASE-1 into TOP.

    TOP is then backed by BASE (BASE = chain length: by nothing)."""
    method = 'admin.vm.volume.ChainPull'


class _Xml(base.ShowOne):
    """Prints the XML itself unless -f is given; with -f json it is
    {"xml": "..."}."""

    def produce_output(self, parsed_args, column_names, data):
        if not parsed_args.formatter_given:
            sys.stdout.write(dict(zip(column_names, data))['xml'])
            return 0
        return super().produce_output(parsed_args, column_names, data)


class DomainDiskXml(_Xml):
    """Print a domain's disks as libvirt <disk> XML.

    Each has its whole chain as nested <backingStore> elements."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('domain', metavar='DOMAIN',
                            help='domain whose volumes to describe')
        parser.add_argument('--full', action='store_true',
                            help='wrap the disks in a minimal domain')
        return parser

    def take_action(self, args):
        return self.fields({'xml': self.client().call(
            'admin.vm.DiskXML', domain=args.domain, full=args.full)['xml']})


class VolumeXml(_Xml):
    """Print a volume as libvirt storage volume XML."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('volume', metavar='DOMAIN:VOLUME',
                            help='the volume to describe')
        return parser

    def take_action(self, args):
        return self.fields({'xml': self.client().call(
            'admin.vm.volume.XML', volume=args.volume)['xml']})


class PoolXml(_Xml):
    """Print a pool as libvirt storage pool XML."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('pool', metavar='POOL',
                            help='the pool to describe')
        return parser

    def take_action(self, args):
        return self.fields({'xml': self.client().call(
            'admin.pool.XML', pool=args.pool)['xml']})
