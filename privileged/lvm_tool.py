"""Running the lvm tool for the root side: by absolute path, with an
argument list only, in an environment of its own (LC_ALL=C, so its
messages can be matched), with no stdin and a wall-clock limit, and its
failures turned into volsep's errors."""

import json
import subprocess

from volsep.privileged import config
from volsep.privileged import errors

_PATH = '/usr/sbin:/usr/bin:/sbin:/bin'
# Messages of lvm (LC_ALL=C) that say which error it is.
_NO_SPACE = ('insufficient free space', 'free space in thin pool',
             'out of data space', 'out of metadata space',
             'needs read/write', 'read-only', 'reached threshold',
             'cannot create new thin volume')
_NOT_FOUND = ('failed to find logical volume', 'not found',
              'volume group "', 'does not exist')
_IN_USE = ('in use', 'is open', 'device or resource busy')
_EXISTS = ('already exists',)
MAX_MESSAGE = 600


def _environment(settings):
    env = {'LC_ALL': 'C', 'PATH': _PATH}
    if not settings.udev:
        # No udev here: LVM makes and removes the /dev nodes itself.
        env['DM_DISABLE_UDEV'] = '1'
    return env


def _config_text(settings, extra):
    # key paths, not sections: the parts may name the same section
    parts = [] if settings.udev else [
        'activation/udev_sync=0 activation/udev_rules=0']
    parts += [p for p in (settings.extra_config, extra) if p]
    return ' '.join(parts)


def _classify(message):
    text = message.lower()
    for needles, kind in ((_EXISTS, errors.AlreadyExists),
                          (_NO_SPACE, errors.NoSpace),
                          (_IN_USE, errors.InUse),
                          (_NOT_FOUND, errors.NotFound)):
        if any(n in text for n in needles):
            return kind
    return errors.PrivilegedError


def run(subcommand, args, extra_config=''):
    """Run ``lvm SUBCOMMAND ARGS...``; return its stdout."""
    settings = config.load().lvm
    argv = [settings.command, subcommand]
    text = _config_text(settings, extra_config)
    if text:
        argv += ['--config', text]
    argv += list(args)
    try:
        proc = subprocess.run(argv, env=_environment(settings),
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=settings.command_seconds, check=False)
    except subprocess.TimeoutExpired:
        raise errors.PrivilegedError(
            f'lvm {subcommand} did not finish within '
            f'{settings.command_seconds} s and was killed') from None
    except OSError as err:
        raise errors.ConfigurationError(
            f'cannot run {settings.command}: {err.strerror}') from None
    if proc.returncode != 0:
        message = proc.stderr.decode('utf-8', 'replace').strip()
        lines = [line.strip() for line in message.splitlines()
                 if line.strip() and 'WARNING' not in line]
        message = '; '.join(lines or [message])[:MAX_MESSAGE]
        raise _classify(message)(f'lvm {subcommand}: {message}')
    return proc.stdout.decode('utf-8', 'replace')


def report(what, fields, target):
    """Rows of ``lvm lvs`` or ``vgs`` for ``target`` as dicts, sizes in
    bytes and times in seconds since the epoch."""
    out = run(what, ['--reportformat', 'json', '--units', 'b', '--nosuffix',
                     '-o', ','.join(fields), target],
              extra_config='report/time_format="%s"')
    try:
        doc = json.loads(out)
        rows = doc['report'][0][what[:-1]]
    except (ValueError, KeyError, IndexError, TypeError):
        raise errors.PrivilegedError(
            f'lvm {what} printed a report volsep cannot read') from None
    return rows
