"""The reference in docs/ keeps up with the code: every command, argument
and option of the CLI, and every volsepd option and root-side key, is
named there. The lists come from the parsers themselves, so a new command
or option fails this until it is documented (issue 11, item 17)."""

import os
import re
import subprocess

from tests import cli_commands
from tests import service_helpers as sh

DOCS = os.environ['VOLSEP_TEST_DOCS']


def _read(name):
    with open(f'{DOCS}/{name}') as f:
        return f.read()


def _sections(text):
    """{heading text: body} for the `### ...` sections of a page."""
    parts = re.split(r'^### (.*)$', text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def _command_sections():
    """{command name: heading + body}: a section belongs to the command
    its heading starts with, `volsep NAME`."""
    found = {}
    for heading, body in _sections(_read('cli.md')).items():
        match = re.match(r'`volsep ([a-z][a-z -]*?)(?= [A-Z\[\-]|`)', heading)
        if match:
            found[match[1]] = heading + body
    return found


def _mentions(text, name):
    """`name` as a word of the text (so --top does not count for
    --top-level, nor DOMAIN for DOMAIN:VOLUME)."""
    return re.search(rf'(?<![\w:-]){re.escape(name)}(?![\w:-])',
                     text) is not None


def test_every_cli_command_has_a_section():
    sections = _command_sections()
    commands = [name for name, _ in cli_commands.parsers()]
    assert sorted(set(commands) - set(sections)) == []
    assert sorted(set(sections) - set(commands)) == [], \
        'sections for commands the CLI does not have'


def test_every_argument_and_option_is_documented_in_its_section():
    sections = _command_sections()
    missing = [(name, argument)
               for name, parser in cli_commands.parsers()
               for action in cli_commands.own_actions(parser)
               for argument in cli_commands.names(action)[:1]
               if not _mentions(sections.get(name, ''), argument)]
    assert missing == []


def test_every_output_and_global_option_is_documented():
    cli = _read('cli.md')
    conventions = cli.split('\n## Pools', 1)[0]
    shared = {argument for _, parser in cli_commands.parsers()
              for action in cli_commands.formatter_actions(parser)
              for argument in cli_commands.names(action)}
    shared |= {argument for action in cli_commands.global_actions()
               for argument in cli_commands.names(action)}
    assert sorted(a for a in shared if not _mentions(conventions, a)) == []


def _volsepd_options():
    """Every option volsepd's parser offers, as its --help lists them."""
    proc = subprocess.run([f'{sh.VENV}/volsepd', '--help'],
                          capture_output=True, text=True,
                          env={'PATH': '/usr/bin:/bin'}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    options = set()
    for line in proc.stdout.splitlines():
        match = re.match(r'  (-\w, )?(--[\w-]+)', line)
        if match:
            options.add(match[2])
    assert {'--state-dir', '--stream-timeout', '--config-file'} <= options
    return options


def test_every_volsepd_option_is_documented():
    page = _read('configuration.md')
    missing = [option for option in sorted(_volsepd_options())
               if not _mentions(page, option)]
    assert missing == []


def test_every_root_side_key_is_documented():
    from volsep.privileged import config
    page = _read('configuration.md')
    assert [opt.name for opt in config._OPTS
            if not _mentions(page, f'`{opt.name}`')] == []

