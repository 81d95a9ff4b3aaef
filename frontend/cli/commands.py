"""Finding volsep's commands without importing them.

cliff's CommandManager asks stevedore for the commands' entry points, and
stevedore imports every one of them; some bring heavy modules (the image
inspection of `volume import` compiles hundreds of regular expressions).
Recording only the entry points leaves cliff to import the module of the
one command that runs, when it looks it up."""

import importlib.metadata

from cliff import commandmanager


class LazyCommandManager(commandmanager.CommandManager):
    def load_commands(self, namespace):
        self.group_list.append(namespace)
        for entry_point in importlib.metadata.entry_points(group=namespace):
            name = entry_point.name
            if self.convert_underscores:
                name = name.replace('_', ' ')
            self.commands[name] = entry_point

    def find_command(self, argv):
        """Exact command names only: cliff would also run a unique prefix
        (`volume rem` as `volume remove`, `vol list`), and a typo must
        never run a command, least of all one that deletes."""
        for i in range(self._get_last_possible_command_index(argv), 0, -1):
            name = ' '.join(argv[:i])
            if name in self.commands:
                return self.commands[name].load(), name, argv[i:]
        raise ValueError(f'Unknown command {argv!r}')
