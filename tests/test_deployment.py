"""The shipped deployment files and the sudo helper's argument check."""

import json
import os

import pytest

from tests.service_helpers import VENV
from volsep.frontend import privsep_helper

ETC = os.environ['VOLSEP_TEST_ETC']


def _sock_dir(tmp_path, mode=0o700):
    d = tmp_path / 'tmpabc123'
    d.mkdir(mode=mode)
    os.chmod(d, mode)
    return d


def test_helper_accepts_exactly_the_oslo_shape(tmp_path, monkeypatch):
    monkeypatch.setattr(privsep_helper, '_SOCKET',
                        __import__('re').compile(
                            rf'{tmp_path}/tmp[A-Za-z0-9_]+/privsep\.sock'))
    d = _sock_dir(tmp_path)
    argv = ['files', '--privsep_context',
            'volsep.privileged.contexts.file_ops', '--privsep_sock_path',
            f'{d}/privsep.sock']
    args = privsep_helper.validate(argv, os.getuid())
    assert args[:2] == ['--config-file', privsep_helper.CONFIG_FILE]
    refusals = [
        argv + ['--privsep_context', 'os.system'],
        argv[:4],
        ['jobs'] + argv[1:],
        argv[:2] + ['oslo_privsep.tests.testctx.context'] + argv[3:],
        argv[:4] + ['/etc/shadow'],
        argv[:4] + [f'{d}/../x/privsep.sock'],
    ]
    for bad in refusals:
        with pytest.raises(privsep_helper.Refused):
            privsep_helper.validate(bad, os.getuid())
    with pytest.raises(privsep_helper.Refused, match='0700'):
        privsep_helper.validate(argv, os.getuid() + 1)


def test_helper_refuses_without_sudo():
    import subprocess
    proc = subprocess.run([f'{VENV}/volsep-privsep-helper',
                           'files'], capture_output=True, text=True,
                          env={'PATH': '/usr/bin:/bin'})
    assert proc.returncode == 2 and 'sudo' in proc.stderr


def test_sudoers_never_grants_privsep_helper():
    with open(f'{ETC}/sudoers.d/volsep') as f:
        rules = [line for line in f if line.strip() and
                 not line.startswith(('#', 'Defaults'))]
    assert rules and all('privsep-helper ' not in r and
                         not r.rstrip().endswith('privsep-helper *') and
                         r.rstrip().endswith('volsep-privsep-helper')
                         for r in rules)


def test_samples_parse():
    with open(f'{ETC}/policy.json.sample') as f:
        assert json.load(f)['rules']
    from volsep.frontend import policy
    policy.Policy.load(f'{ETC}/policy.json.sample')
    from oslo_config import cfg
    from volsep.privileged import config
    conf = cfg.ConfigOpts()
    conf.register_opts(config._OPTS, group='privileged')
    conf(args=[], default_config_files=[f'{ETC}/privileged.conf.sample'])
    assert conf.privileged.allowed_roots
    with open(f'{ETC}/systemd/volsepd.service') as f:
        unit = f.read()
    assert 'CapabilityBoundingSet=' in unit and 'NoNewPrivileges=yes' in unit


def test_the_service_install_leaves_the_hosts_configuration_alone():
    """README's first command installs the service only: no libvirt, QEMU
    system emulator or test tools, and no file under /etc/libvirt."""
    with open(f'{ETC}/ci-install') as f:
        script = f.read()
    for absent in ('/etc/libvirt', 'libvirt-daemon', 'qemu-system',
                   '[test]', 'pytest'):
        assert absent not in script, absent


def _keys(text, section='DEFAULT'):
    import configparser
    parser = configparser.ConfigParser()
    parser.read_string(text)
    return dict(parser[section]) if section != 'DEFAULT' else \
        dict(parser.defaults())


def test_every_key_of_the_volsepd_sample_is_read(tmp_path):
    """Each setting in etc/volsep.conf.sample reaches volsepd: changed in a
    copy, the changed value is what oslo.config returns."""
    from oslo_config import cfg
    from volsep.frontend import daemon
    with open(f'{ETC}/volsep.conf.sample') as f:
        sample = f.read()
    keys = _keys(sample)
    assert {'state_dir', 'user', 'privileged_config'} <= set(keys)
    changed = tmp_path / 'volsep.conf'
    changed.write_text('[DEFAULT]\n' + ''.join(
        f'{key} = /changed/{key}\n' for key in keys))
    conf = cfg.ConfigOpts()
    conf.register_cli_opts(daemon.OPTS)
    conf(['--config-file', str(changed)])
    for key in keys:
        assert getattr(conf, key) == f'/changed/{key}', key


def test_a_bad_configuration_is_one_line_and_a_usage_exit(tmp_path):
    import subprocess
    bad_value = tmp_path / 'bad.conf'
    bad_value.write_text('[DEFAULT]\nprivileged_ping_timeout = soon\n')
    broken = tmp_path / 'broken.conf'
    broken.write_text('[DEFAULT\n')
    for argv in (['--config-file', str(tmp_path / 'missing.conf')],
                 ['--config-file', str(broken)],
                 ['--config-file', str(bad_value)]):
        proc = subprocess.run([f'{VENV}/volsepd', *argv,
                               '--state-dir', str(tmp_path / 'state')],
                              capture_output=True, text=True,
                              env={'PATH': '/usr/bin:/bin'})
        assert proc.returncode == 2, (argv, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert 'Traceback' not in proc.stderr
    assert not (tmp_path / 'state').exists()


def test_the_unit_creates_what_it_writes_and_allows_the_sample_roots():
    with open(f'{ETC}/systemd/volsepd.service') as f:
        unit = f.read()
    assert 'StateDirectory=volsep' in unit and 'LogsDirectory=volsep' in unit
    writable = ['/var/lib/volsep', '/var/log/volsep']
    for line in unit.splitlines():
        if line.startswith('ReadWritePaths='):
            writable += [p.lstrip('-') for p in line.split('=', 1)[1].split()]
    with open(f'{ETC}/privileged.conf.sample') as f:
        roots = _keys(f.read(), 'privileged')['allowed_roots'].split(',')
        f.seek(0)
        audit_log = _keys(f.read(), 'privileged')['audit_log']
    for path in roots + [audit_log]:
        assert any(path == w or path.startswith(w + '/') for w in writable), \
            path


def test_the_sudo_unit_can_reach_sudo_and_prepares_as_root():
    """etc/systemd/volsepd-sudo.service: the service runs as volsep, so
    NoNewPrivileges would stop sudo; the bounding set keeps what sudo and
    the root daemons need; the state directory is made as root ('+'), and
    StateDirectory=/LogsDirectory= (which would hand the audit log and the
    pools to volsep) are not used. Every volsepd command line in it parses."""
    import shlex
    import subprocess
    with open(f'{ETC}/systemd/volsepd-sudo.service') as f:
        unit = f.read()
    settings = [line.split('=', 1) for line in unit.splitlines()
                if '=' in line and not line.startswith('#')]
    keys = {key for key, _ in settings}
    assert 'NoNewPrivileges' not in keys
    assert not {'StateDirectory', 'LogsDirectory'} & keys
    assert ('User', 'volsep') in [tuple(s) for s in settings]
    bounding = dict(settings)['CapabilityBoundingSet'].split()
    assert {'CAP_SETUID', 'CAP_SETGID', 'CAP_DAC_OVERRIDE'} <= set(bounding)
    commands = [value for key, value in settings
                if key in ('ExecStart', 'ExecStartPre')]
    volsepd = [shlex.split(c.lstrip('+')) for c in commands
               if 'volsepd' in c]
    assert [c for c in commands if '--prepare' in c][0].startswith('+')
    assert any(argv[-2:] == ['--privsep-start', 'sudo'] for argv in volsepd)
    for argv in volsepd:
        args = [a for a in argv[1:] if a != '--config-file' and
                not a.startswith('/etc/')]
        proc = subprocess.run([f'{VENV}/volsepd', *args, '--help'],
                              capture_output=True, text=True)
        assert proc.returncode == 0, (argv, proc.stderr)


def test_the_defaults_the_volsepd_sample_shows_are_the_real_ones():
    """Commented '# key = value' lines in etc/volsep.conf.sample document
    defaults: each names a volsepd option and shows its actual default."""
    import re
    from volsep.frontend import daemon
    options = {opt.dest: opt for opt in daemon.OPTS + daemon.LIMIT_OPTS}
    with open(f'{ETC}/volsep.conf.sample') as f:
        shown = re.findall(r'^# ([a-z_]+) = (\S+)$', f.read(), re.M)
    documented = [(key, value) for key, value in shown
                  if options.get(key) is not None and
                  options[key].default is not None]
    assert {'privsep_start', 'max_connections', 'stream_timeout'} <= \
        {key for key, _ in documented}
    for key, value in documented:
        assert options[key].type(value) == options[key].default, key
