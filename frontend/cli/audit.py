"""`volsep audit verify`: check the root side's hash-chained audit log."""

import sys

from volsep.frontend.cli import app
from volsep.frontend.cli import base


class AuditVerify(base.ShowOne):
    """Verify that no audit record was edited, removed or reordered."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '--audit-log', metavar='PATH',
            help='audit log file to check directly (reading it needs '
                 'root); default: ask the running volsepd, whose root side '
                 'checks its own log')
        return parser

    def take_action(self, parsed_args):
        if parsed_args.audit_log is None:
            # The running service's log, checked by its root side.
            result = self.client().call('admin.audit.Verify')
        else:
            result = self._verify_file(parsed_args.audit_log)
        self._problem = result['problem'] or ''
        return self.fields(result)

    @staticmethod
    def _verify_file(path):
        # Imported here: the root side's audit module brings oslo.privsep
        # and oslo.config, which only a direct check of a file needs.
        from volsep.privileged import audit
        try:
            lines = audit.read_lines(path)
        except OSError as err:
            raise app.OperationError('StorageError',
                                     f'cannot read {path}: {err.strerror}')
        ok, count, problem = audit.verify_lines(lines)
        return {'ok': ok, 'lines': len(lines), 'verified': count,
                'problem': problem or None}

    def run(self, parsed_args):
        self._problem = ''
        status = super().run(parsed_args)
        if status == app.EXIT_OK and self._problem:
            print(f'volsep: AuditChainBroken: {self._problem}',
                  file=sys.stderr)
            return app.EXIT_ERROR
        return status
