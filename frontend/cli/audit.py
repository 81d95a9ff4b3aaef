"""`volsep audit verify`: check the root side's hash-chained audit log."""

import sys

from volsep.frontend.cli import app
from volsep.frontend.cli import base
from volsep.privileged import audit
from volsep.privileged import config


class AuditVerify(base.ShowOne):
    """Verify that no audit record was edited, removed or reordered."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '--audit-log', metavar='PATH',
            help='audit log to check (default: the one named in the root '
                 'side configuration; reading it needs root)')
        return parser

    def take_action(self, parsed_args):
        path = parsed_args.audit_log or config.load().audit_log
        try:
            lines = audit.read_lines(path)
        except OSError as err:
            raise app.OperationError('StorageError',
                                     f'cannot read {path}: {err.strerror}')
        ok, count, problem = audit.verify_lines(lines)
        self._problem = problem
        return ('ok', 'lines', 'verified', 'problem'), (
            ok, len(lines), count, problem or None)

    def run(self, parsed_args):
        self._problem = ''
        status = super().run(parsed_args)
        if status == app.EXIT_OK and self._problem:
            print(f'volsep: AuditChainBroken: {self._problem}',
                  file=sys.stderr)
            return app.EXIT_ERROR
        return status
