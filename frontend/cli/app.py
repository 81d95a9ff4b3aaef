"""The volsep command: a cliff application whose commands are entry points
in the `volsep.cli` group."""

import json
import sys

from cliff import app
from cliff import commandmanager

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class OperationError(Exception):
    """An error to report as `volsep: CLASS: message`, exit status 1."""

    def __init__(self, error_class, message):
        super().__init__(message)
        self.error_class = error_class
        self.message = message


class VolsepApp(app.App):
    def __init__(self):
        super().__init__(
            description='volsep: privilege-separated VM disk storage',
            version='0.1.0',
            command_manager=commandmanager.CommandManager('volsep.cli'),
            deferred_help=True)

    def run_subcommand(self, argv):
        try:
            return super().run_subcommand(argv)
        except SystemExit as err:  # argparse usage errors
            return EXIT_USAGE if err.code else EXIT_OK

    def clean_up(self, cmd, result, err):
        if isinstance(err, OperationError):
            print(f'volsep: {err.error_class}: {err.message}',
                  file=sys.stderr)
            if getattr(self.options, 'json_errors', False):
                print(json.dumps({'error': err.error_class,
                                  'message': err.message}))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    application = VolsepApp()
    # INTERFACE.md: with -f json an error is also printed as JSON on stdout.
    application.json_errors = '-f' in argv and 'json' in argv
    return application.run(argv)


if __name__ == '__main__':
    sys.exit(main())
