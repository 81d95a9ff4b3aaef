"""Every volsep command with its argparse parser, read from the installed
CLI itself, so that checks over "every command" cannot fall behind it."""

from volsep.frontend.cli import app

# cliff's own commands: its help and its shell-completion generator.
CLIFF_COMMANDS = ('complete', 'help')


def application():
    return app.VolsepApp()


def parsers():
    """[(command name, parser)], sorted by name."""
    volsep = application()
    found = []
    for name, entry in sorted(volsep.command_manager):
        command = entry.load()(volsep, None)
        found.append((name, command.get_parser(f'volsep {name}')))
    return found


def own_actions(parser):
    """The arguments a command defines itself: those in argparse's default
    groups, not in cliff's formatter groups."""
    default_groups = (parser._positionals, parser._optionals)
    return [action for group in default_groups
            for action in group._group_actions
            if action.dest != 'help']


def formatter_actions(parser):
    default_groups = (parser._positionals, parser._optionals)
    return [action for group in parser._action_groups
            if group not in default_groups
            for action in group._group_actions]


def global_actions():
    volsep = application()
    return [action for action in volsep.parser._actions]


def names(action):
    """How the docs name an argument: its long option (or its only one),
    or a positional's metavar."""
    if not action.option_strings:
        return [action.metavar or action.dest]
    longs = [o for o in action.option_strings if o.startswith('--')]
    return longs or action.option_strings
