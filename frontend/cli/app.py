"""The volsep command: a cliff application whose commands are entry points
in the `volsep.cli` group."""

import sys

from cliff import app
from cliff import commandmanager

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


class VolsepApp(app.App):
    def __init__(self):
        super().__init__(
            description='volsep: privilege-separated VM disk storage',
            version='0.1.0',
            command_manager=commandmanager.CommandManager('volsep.cli'),
            deferred_help=True)

    def build_option_parser(self, description, version, argparse_kwargs=None):
        parser = super().build_option_parser(description, version,
                                             argparse_kwargs)
        parser.add_argument(
            '--socket', metavar='PATH',
            help='volsepd socket (default: $VOLSEP_SOCKET, else '
                 '/var/lib/volsep/volsepd.sock)')
        return parser

    def run_subcommand(self, argv):
        try:
            return super().run_subcommand(argv)
        except SystemExit as err:  # argparse usage errors
            return EXIT_USAGE if err.code else EXIT_OK


def main(argv=None):
    return VolsepApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == '__main__':
    sys.exit(main())
