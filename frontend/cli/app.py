"""The volsep command: a cliff application whose commands are entry points
in the `volsep.cli` group."""

import inspect
import sys

from cliff import app
from cliff import help

from volsep.frontend.cli import commands

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class OperationError(Exception):
    """An error to report as `volsep: CLASS: message`, exit status 1."""

    exit_status = EXIT_ERROR

    def __init__(self, error_class, message):
        super().__init__(message)
        self.error_class = error_class
        self.message = message


class UsageError(OperationError):
    """A command line that cannot be carried out as given (found out only
    after parsing, e.g. the size of a pipe): reported the same way, exit
    status 2."""

    exit_status = EXIT_USAGE

    def __init__(self, message):
        super().__init__('InvalidArgument', message)


def usage_error_line(message):
    print(f'volsep: InvalidArgument: {message}', file=sys.stderr)
    return EXIT_USAGE


def report_parse_errors_in_one_line(parser):
    """argparse prints the whole usage and then the error; volsep prints
    one line, shaped like every other error, and exits 2."""
    def error(message):
        command = parser.prog.partition(' ')[2]
        where = f'volsep help {command}' if command else 'volsep --help'
        usage_error_line(f'{message} (see: {where})')
        sys.exit(EXIT_USAGE)
    parser.error = error


class VolsepApp(app.App):
    def __init__(self):
        super().__init__(
            description='volsep: privilege-separated VM disk storage',
            version='0.1.0',
            command_manager=commands.LazyCommandManager('volsep.cli'),
            deferred_help=True)

    def build_option_parser(self, description, version, argparse_kwargs=None):
        parser = super().build_option_parser(description, version,
                                             argparse_kwargs)
        parser.add_argument(
            '--socket', metavar='PATH',
            help='volsepd socket (default: $VOLSEP_SOCKET, else '
                 '/var/lib/volsep/volsepd.sock)')
        report_parse_errors_in_one_line(parser)
        return parser

    def run(self, argv):
        try:
            return super().run(argv)
        except help.HelpExit:  # --help, or a bare `volsep`
            return EXIT_OK

    def interact(self):
        # cliff would start an interactive shell; a bare command prints
        # the help instead, as people expect of a command-line tool.
        help.HelpAction([], dest='help', default=self)(
            self.parser, self.options, None, None)

    def run_subcommand(self, argv):
        if argv[:1] == ['help'] and len(argv) == 2 and self._group(argv[1]):
            return self._list_group(argv[1])
        try:
            self.command_manager.find_command(argv)
        except ValueError:
            return self._not_a_command(argv)
        try:
            return super().run_subcommand(argv)
        except SystemExit as err:  # argparse usage errors
            return EXIT_USAGE if err.code else EXIT_OK

    def _group(self, word):
        """The commands `volsep WORD ...`, by their second word."""
        return {name.partition(' ')[2]: entry
                for name, entry in self.command_manager
                if name.startswith(word + ' ')}

    def _list_group(self, word):
        commands = self._group(word)
        width = max(map(len, commands))
        lines = [f'usage: volsep {word} COMMAND [ARGUMENTS]', '',
                 f'{word} commands:']
        for name, entry in sorted(commands.items()):
            summary = inspect.getdoc(entry.load()).split('\n')[0]
            summary = summary.rstrip('.')
            lines.append(f'  {name:<{width}}  {summary}')
        lines += ['', f"Help on one: volsep help {word} COMMAND"]
        self.stdout.write('\n'.join(lines) + '\n')
        return EXIT_OK

    def _not_a_command(self, argv):
        commands = self._group(argv[0])
        if commands and len(argv) == 1:
            return self._list_group(argv[0])
        if commands:
            return usage_error_line(
                f"'{' '.join(argv[:2])}' is not a volsep command; "
                f"{argv[0]} commands: {', '.join(sorted(commands))}")
        first_words = sorted({name.split()[0]
                              for name, _ in self.command_manager})
        return usage_error_line(
            f"'{argv[0]}' is not a volsep command; commands: "
            f"{', '.join(first_words)} (see: volsep --help)")


def main(argv=None):
    return VolsepApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == '__main__':
    sys.exit(main())
