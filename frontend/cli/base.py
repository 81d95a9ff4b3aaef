"""What every volsep command shares: a client, and errors reported as
INTERFACE.md says (one line on stderr; JSON on stdout with -f json)."""

import json
import sys

from cliff import command
from cliff import lister
from cliff import show

from volsep.frontend import client as client_module
from volsep.frontend.cli import app


def _error_class(err):
    return getattr(err, 'error_class', None)


class _Reporting:
    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        # INTERFACE.md uses --format for image formats; cliff's output
        # formatter stays reachable as -f.
        action = parser._option_string_actions.pop('--format', None)
        if action is not None:
            action.option_strings.remove('--format')
        return parser

    def client(self):
        return client_module.Client(self.app.options.socket)

    def run(self, parsed_args):
        try:
            return super().run(parsed_args)
        except Exception as err:
            error_class = _error_class(err)
            if error_class is None:
                raise
            message = getattr(err, 'message', str(err))
            print(f'volsep: {error_class}: {message}', file=sys.stderr)
            if getattr(parsed_args, 'formatter', None) == 'json' and \
                    not self.stdout_is_data(parsed_args):
                print(json.dumps({'error': error_class, 'message': message}))
            return getattr(err, 'exit_status', app.EXIT_ERROR)

    def stdout_is_data(self, parsed_args):
        """Whether stdout carries the command's data (export to -): then
        nothing else may be written there, not even an error document."""
        return False


class Command(_Reporting, command.Command):
    pass


class Lister(_Reporting, lister.Lister):
    @staticmethod
    def rows(items, columns):
        return columns, [tuple(item.get(c) for c in columns) for item in items]


class ShowOne(_Reporting, show.ShowOne):
    @staticmethod
    def fields(record):
        keys = tuple(record)
        return keys, tuple(record[k] for k in keys)
