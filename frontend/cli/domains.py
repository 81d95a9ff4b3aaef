"""volsep domain ..."""

from volsep.frontend.cli import base


class DomainStart(base.Lister):
    """Start every volume of a domain, as a VM start does."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('domain', metavar='DOMAIN',
                            help='the domain whose volumes to start')
        return parser

    def take_action(self, args):
        started = self.client().call('admin.vm.Start', domain=args.domain)
        return self.rows(started, ('volume', 'path', 'format', 'rw'))


class DomainStop(base.ShowOne):
    """Stop every volume of a domain (commit or discard)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('domain', metavar='DOMAIN',
                            help='the domain whose volumes to stop')
        return parser

    def take_action(self, args):
        self.client().call('admin.vm.Stop', domain=args.domain)
        return self.fields({'domain': args.domain, 'running': False})
