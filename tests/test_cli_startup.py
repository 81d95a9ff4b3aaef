"""A CLI command imports only what it runs (issue 12, goal 3: `pool list`
and `domain start` within 150 ms). Timing on a shared machine is left to
`bench/run cli-startup`; this checks the cause, the modules imported, by
running the installed CLI against a real volsepd under a hook that records
sys.modules as the interpreter exits. (`python -X importtime` would miss
the command's own module: it sees `import` statements only, and cliff
loads the command with importlib.import_module.)"""

import subprocess

import pytest

from tests import service_helpers as sh
from tests.test_service import service  # noqa: F401

# Runs the console script as its shebang would, after arranging for the
# names in sys.modules to be written to argv[1] at exit.
RECORD_MODULES = """
import atexit, runpy, sys
into = sys.argv.pop(1)
def record():
    with open(into, 'w') as f:
        f.write('\\n'.join(sys.modules))
atexit.register(record)
sys.argv.pop(0)
runpy.run_path(sys.argv[0], run_name='__main__')
"""
COMMAND_MODULES = {f'volsep.frontend.cli.{name}'
                   for name in ('pools', 'volumes', 'domains', 'chains',
                                'audit')}
# What no simple command needs: image inspection (hundreds of regular
# expressions compiled at import), the root side, XML, progress bars,
# cliff's interactive shell.
HEAVY_MODULES = {
    'volsep.privileged.images', 'volsep.privileged.qemu',
    'volsep.privileged.audit', 'volsep.privileged.contexts',
    'oslo_utils.imageutils', 'oslo_utils.imageutils.format_inspector',
    'oslo_privsep', 'oslo_config', 'lxml', 'tqdm', 'cmd2',
    'cliff.interactive',
}
SIMPLE_COMMANDS = [
    (('pool', 'list'), 'volsep.frontend.cli.pools'),
    (('domain', 'start', 'vm'), 'volsep.frontend.cli.domains'),
    (('domain', 'stop', 'vm'), 'volsep.frontend.cli.domains'),
    (('volume', 'list'), 'volsep.frontend.cli.volumes'),
]


def _imported_modules(service, args, tmp_path):
    """The modules `volsep ARGS` has imported when it exits."""
    record = tmp_path / 'modules'
    proc = subprocess.run(
        [f'{sh.VENV}/python', '-c', RECORD_MODULES, str(record),
         f'{sh.VENV}/volsep', '--socket', service.socket, *args],
        capture_output=True, text=True, env={'PATH': '/usr/bin:/bin'},
        stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    modules = set(record.read_text().split('\n'))
    assert 'volsep.frontend.cli.app' in modules
    return modules


@pytest.mark.parametrize('args, own_module', SIMPLE_COMMANDS,
                         ids=[' '.join(a) for a, _ in SIMPLE_COMMANDS])
def test_a_simple_command_imports_its_module_and_nothing_heavy(
        service, args, own_module, tmp_path):
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '4M')
    if args[:2] == ('domain', 'stop'):
        service.json('domain', 'start', 'vm')
    modules = _imported_modules(service, args, tmp_path)
    assert modules & COMMAND_MODULES == {own_module}
    heavy = {name for name in modules
             if any(name == h or name.startswith(h + '.')
                    for h in HEAVY_MODULES)}
    assert heavy == set()
