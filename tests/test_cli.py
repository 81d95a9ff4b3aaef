"""The volsep CLI as users of qvm-volume, virsh and OpenStack clients
expect it (issue 11, item 15), through the real CLI and a real volsepd."""

import json
import os
import subprocess

import pytest

from tests import cli_commands
from tests import service_helpers as sh
from tests.test_service import service  # noqa: F401

MiB = 1 << 20
GiB = 1 << 30
ENV = {'PATH': '/usr/bin:/bin'}
COMPLETION = '/usr/share/bash-completion/completions/volsep'


def _volsep(*args, timeout=60):
    proc = subprocess.run([f'{sh.VENV}/volsep', *args], capture_output=True,
                          text=True, env=ENV, stdin=subprocess.DEVNULL,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def _usage_error(rc, out, err, formatter_json=False):
    """Exit 2, one line on stderr shaped as every error, and nothing on
    stdout but, with -f json, the error document."""
    assert rc == 2, (rc, out, err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith('volsep: InvalidArgument: '), err
    if formatter_json and out:
        assert json.loads(out)['error'] == 'InvalidArgument'
    else:
        assert out == '', out


def test_the_xml_commands_take_json_and_print_raw_xml_by_default(service):
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '4M')
    for args in (('volume', 'xml', 'vm:root'), ('pool', 'xml', 'default'),
                 ('domain', 'disk-xml', 'vm')):
        rc, raw, err = service.cli(*args)
        assert rc == 0, (args, err)
        assert raw.lstrip().startswith('<'), (args, raw)
        assert service.json(*args) == {'xml': raw}, args
    rc, out, err = service.cli('volume', 'xml', 'vm:nope', '-f', 'json')
    assert rc == 1 and json.loads(out)['error'] == 'VolumeNotFound', err


def test_volume_info_property_prints_the_bare_value(service):
    info = service.json('volume', 'create', 'vm:root', '--pool', 'default',
                        '--size', '4M')
    for prop, expected in (('size', str(4 * MiB)), ('path', info['path']),
                           ('pool', 'default'), ('rw', 'True')):
        rc, out, err = service.cli('volume', 'info', 'vm:root', prop)
        assert rc == 0, err
        assert out == expected + '\n', (prop, out)
    assert service.json('volume', 'info', 'vm:root', 'size') == {
        'size': 4 * MiB}
    rc, out, err = service.cli('volume', 'info', 'vm:root', 'colour')
    _usage_error(rc, out, err)
    assert 'size' in err


def test_sizes_for_people_on_request_bytes_otherwise(service):
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', '1536MiB')
    rc, out, err = service.cli('volume', 'info', 'vm:root', 'size',
                               '--human')
    assert (rc, out) == (0, '1.5 GiB\n'), err
    rc, out, err = service.cli('volume', 'list', '--human', '-f', 'value',
                               '-c', 'size')
    assert (rc, out) == (0, '1.5 GiB\n'), err
    rc, out, err = service.cli('volume', 'list')
    assert rc == 0 and str(3 * GiB // 2) in out and 'GiB' not in out
    rc, out, err = service.cli('pool', 'info', 'default', '--human', '-f',
                               'value', '-c', 'size')
    assert rc == 0 and out.rstrip().endswith('iB'), (out, err)
    assert service.json('volume', 'info', 'vm:root')['size'] == 3 * GiB // 2
    for machine in ('json', 'yaml'):
        rc, out, err = service.cli('volume', 'list', '--human', '-f',
                                   machine)
        _usage_error(rc, out, err, formatter_json=machine == 'json')


def test_sizes_take_units_wherever_a_size_is_given(service):
    pool_dir = f'{service.state_dir}/pools/capped'
    added = service.json('pool', 'add', 'capped', 'file', '-o',
                         f'dir_path={pool_dir}', '-o', 'max_volume_size=10G')
    assert added['max_volume_size'] == str(10 * GiB)
    changed = service.json('pool', 'set', 'capped', '-o',
                           'max_volume_size=8MiB')
    assert changed['max_volume_size'] == str(8 * MiB)
    assert service.json('volume', 'create', 'vm:root', '--pool', 'capped',
                        '--size', '4M')['size'] == 4 * MiB
    assert service.json('volume', 'resize', 'vm:root',
                        '8MiB')['size'] == 8 * MiB
    rc, _, err = service.cli('volume', 'resize', 'vm:root', '9M')
    assert rc == 1 and 'exceeds the limit' in err, err
    rc, out, err = service.cli('pool', 'set', 'capped', '-o',
                               'max_volume_size=lots')
    assert rc == 1 and err.startswith('volsep: InvalidArgument: '), err
    assert service.json('pool', 'info', 'capped')['max_volume_size'] == \
        str(8 * MiB)


def test_pool_drivers_reads_as_a_table_and_stays_data_in_json(service):
    rc, out, err = service.cli('pool', 'drivers')
    assert rc == 0, err
    assert '{' not in out and "'" not in out, out
    assert 'dir_path: absolute directory' in out
    drivers = {d['driver']: d['options'] for d in
               service.json('pool', 'drivers')}
    assert 'dir_path' in drivers['file-reflink']
    rc, out, err = service.cli('pool', 'drivers', '-f', 'value', '-c',
                               'driver')
    assert set(out.split()) == set(drivers)


def test_vid_is_shown_as_the_volume_is_addressed(service):
    created = service.json('volume', 'create', 'vm:root', '--pool',
                           'default', '--size', '1M')
    assert created['vid'] == 'vm:root'
    assert service.json('volume', 'info', 'vm:root')['vid'] == 'vm:root'
    assert [v['vid'] for v in service.json('volume', 'list')] == ['vm:root']
    rc, out, _ = service.cli('volume', 'info', 'vm:root', 'vid')
    assert out == 'vm:root\n'


def test_every_argument_and_option_has_help():
    missing = [(name, cli_commands.names(action))
               for name, parser in cli_commands.parsers()
               for action in parser._actions
               if not action.help]
    assert missing == []
    assert all(action.help for action in cli_commands.global_actions())


def test_a_command_group_lists_its_subcommands():
    groups = {}
    for name, _ in cli_commands.parsers():
        first, _, rest = name.partition(' ')
        if rest:
            groups.setdefault(first, []).append(rest)
    assert set(groups) == {'audit', 'chain', 'domain', 'pool', 'volume'}
    for group, subcommands in groups.items():
        for argv in ((group,), (group, '--help'), ('help', group)):
            rc, out, err = _volsep(*argv)
            assert rc == 0 and err == '', (argv, err)
            listed = [line.split()[0] for line in out.splitlines()
                      if line.startswith('  ')]
            assert listed == sorted(subcommands), (argv, out)
    rc, out, err = _volsep('volume', 'frobnicate')
    _usage_error(rc, out, err)
    assert 'create' in err


def test_a_bare_volsep_prints_help_instead_of_a_shell():
    rc, out, err = _volsep(timeout=30)
    assert rc == 0, err
    assert out.startswith('usage: volsep') and 'volume create' in out
    assert '(Cmd)' not in out


def test_shell_completion_is_installed_and_completes():
    with open(f'{os.environ["VOLSEP_TEST_ETC"]}/ci-install') as f:
        install = f.read()
    assert 'volsep" complete --name volsep --shell bash > ' \
        '"$completions/volsep"' in install
    assert 'completions=/usr/share/bash-completion/completions' in install
    rc, script, err = _volsep('complete', '--name', 'volsep', '--shell',
                              'bash')
    assert rc == 0 and 'complete -F _volsep volsep' in script, err

    def complete(*words):
        probe = ('source /usr/share/bash-completion/bash_completion\n'
                 f'{script}\n'
                 'COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))\n'
                 'COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
                 '_volsep; printf "%s\\n" "${COMPREPLY[@]}"\n')
        proc = subprocess.run(['bash', '-c', probe, 'bash', 'volsep',
                               *words], capture_output=True, text=True,
                              env=ENV, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete('vo') == ['volume']
    assert complete('volume', 'cr') == ['create']
    assert complete('volume', 'create', '--rev') == ['--revisions-to-keep']
    assert 'disk-xml' in complete('domain', '')


def test_an_unreachable_volsepd_says_how_to_start_it(tmp_path):
    rc, out, err = _volsep('--socket', str(tmp_path / 'nothing.sock'),
                           'pool', 'list')
    assert rc == 1 and out == ''
    assert len(err.splitlines()) == 1, err
    assert err.startswith('volsep: StorageError: cannot reach volsepd at ')
    assert 'volsepd --state-dir' in err and 'systemctl start volsepd' in err
    assert '--socket' in err and 'VOLSEP_SOCKET' in err


@pytest.mark.parametrize('argv', [
    ('volume', 'create'),                               # missing arguments
    ('volume', 'create', 'vm:x', '--pool', 'default', '--size', '10X'),
    ('volume', 'create', 'vm:x', '--pool', 'default'),  # no --size
    ('volume', 'create', 'vm:x', '--pool', 'default', '--size', '1M',
     '--kind', 'eternal'),
    ('volume', 'resize', 'vm:x', 'big'),
    ('volume', 'list', '--colour'),
    ('volume', 'set', 'vm:x', 'size', '1'),
    ('pool', 'add', 'p', 'file', '-o', 'dir_path'),
    ('pool', 'set', 'default', '-o', '=1'),
    ('frobnicate',),
    ('--socket',),
])
def test_usage_errors_exit_2_with_one_line_and_change_nothing(service, argv):
    rc, out, err = service.cli(*argv)
    _usage_error(rc, out, err)
    rc, out, err = service.cli(*argv, '-f', 'json')
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert service.json('volume', 'list') == []
    assert [p['name'] for p in service.json('pool', 'list')] == ['default']


def test_an_abbreviated_command_is_not_run(service):
    """Found by a newcomer: cliff ran any unique prefix (`vol list`,
    `volume rem VOL` as `volume remove VOL`). Only exact names run; an
    abbreviation is a usage error and changes nothing."""
    service.json('volume', 'create', 'abbr:root', '--pool', 'default',
                 '--size', '1M')
    for argv in (('vol', 'list'), ('volume', 'li'),
                 ('volume', 'rem', 'abbr:root')):
        rc, out, err = service.cli(*argv)
        assert rc == 2 and 'not a volsep command' in err, (argv, rc, err)
    assert service.json('volume', 'info', 'abbr:root')['size'] == 1 << 20
