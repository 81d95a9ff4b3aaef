"""What every volsep command shares: a client, output formats, and errors
reported as INTERFACE.md says (one line on stderr; JSON on stdout with
-f json)."""

import json
import sys

from cliff import lister
from cliff import show

from volsep.frontend import client as client_module
from volsep.frontend.cli import app
from volsep.frontend.cli import units

# Formats read by programs: they always carry sizes in bytes.
MACHINE_FORMATS = ('json', 'yaml')


def _error_class(err):
    return getattr(err, 'error_class', None)


class _Reporting:
    # Whether the output has sizes, and so whether --human is offered.
    shows_sizes = False

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        # INTERFACE.md uses --format for image formats; cliff's output
        # formatter stays reachable as -f.
        action = parser._option_string_actions.pop('--format', None)
        if action is not None:
            action.option_strings.remove('--format')
        # Left unset so that a command can tell an -f it was given from
        # cliff's default (see default_formatter).
        parser.set_defaults(formatter=None)
        if self.shows_sizes:
            parser.add_argument(
                '--human', action='store_true',
                help='show sizes as people read them (1.5 GiB); json and '
                     'yaml refuse it, as they always give bytes')
        app.report_parse_errors_in_one_line(parser)
        return parser

    def get_epilog(self):
        # cliff's epilog would add "provided by the X plugin" for a command
        # from another distribution than the app's. Finding a command's
        # distribution parses the file list of every installed one
        # (importlib.metadata.packages_distributions), about a third of a
        # command's start-up, and every volsep command is volsep's own.
        hook_epilogs = [hook.obj.get_epilog() for hook in self._hooks
                        if hook.obj is not None]
        return '\n\n'.join([self._epilog or '', *filter(None, hook_epilogs)])

    def default_formatter(self, parsed_args):
        """The output format when no -f is given."""
        return self.formatter_default

    def client(self):
        return client_module.Client(self.app.options.socket)

    def run(self, parsed_args):
        parsed_args.formatter_given = parsed_args.formatter is not None
        if not parsed_args.formatter_given:
            parsed_args.formatter = self.default_formatter(parsed_args)
        try:
            if getattr(parsed_args, 'human', False) and \
                    parsed_args.formatter in MACHINE_FORMATS:
                raise app.UsageError(
                    f'--human is for people; -f {parsed_args.formatter} '
                    f'always gives sizes in bytes')
            return super().run(parsed_args)
        except Exception as err:
            error_class = _error_class(err)
            if error_class is None:
                raise
            message = getattr(err, 'message', str(err))
            print(f'volsep: {error_class}: {message}', file=sys.stderr)
            if parsed_args.formatter == 'json' and \
                    not self.stdout_is_data(parsed_args):
                print(json.dumps({'error': error_class, 'message': message}))
            return getattr(err, 'exit_status', app.EXIT_ERROR)

    def stdout_is_data(self, parsed_args):
        """Whether stdout carries the command's data (export to -): then
        nothing else may be written there, not even an error document."""
        return False


class Lister(_Reporting, lister.Lister):
    @staticmethod
    def rows(items, columns):
        return columns, [tuple(item.get(c) for c in columns) for item in items]

    def produce_output(self, parsed_args, column_names, data):
        if getattr(parsed_args, 'human', False):
            data = [units.readable_row(column_names, row) for row in data]
        return super().produce_output(parsed_args, column_names, data)


class ShowOne(_Reporting, show.ShowOne):
    @staticmethod
    def fields(record):
        keys = tuple(record)
        return keys, tuple(record[k] for k in keys)

    def produce_output(self, parsed_args, column_names, data):
        if getattr(parsed_args, 'human', False):
            data = units.readable_row(column_names, data)
        return super().produce_output(parsed_args, column_names, data)
