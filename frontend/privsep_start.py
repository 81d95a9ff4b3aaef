"""Start the privileged daemons and, in system mode, drop to a plain user.

System mode (started as root): both privsep daemons are forked while the
process is still root, then this process gives up root for good. User mode
(started by anyone else): the same daemons and the same code path, with no
capabilities to keep. Sudo mode (started as the service user, never root):
each daemon is started through ``sudo volsep-privsep-helper NAME``, the one
command the shipped sudoers rule grants, which checks its arguments and
serves volsep's guarded daemon as root.
"""

import ctypes
import grp
import os
import pwd
import sys
import tempfile

from oslo_config import cfg
from volsep.frontend import privsep_helper
from volsep.privileged import contexts
from volsep.privileged import guard

_PR_SET_NO_NEW_PRIVS = 38


SUDO = '/usr/bin/sudo'


class DropFailed(Exception):
    pass


class SudoUnavailable(Exception):
    pass


def _ensure_config_parsed():
    # privsep reads its options through cfg.CONF, which must have been
    # parsed; volsepd parses its own command line first, tests do not.
    if 'config_file' not in cfg.CONF:
        cfg.CONF(args=[], project='volsep')


def start_daemons(method='fork'):
    """Start one daemon per privileged context by ``method`` ('fork' or
    'sudo'); return the mode: 'system', 'user' or 'sudo'."""
    _ensure_config_parsed()
    if method == 'sudo':
        _start_through_sudo()
        return 'sudo'
    system = os.geteuid() == 0
    for ctx in contexts.ALL:
        if not system:
            cfg.CONF.set_override('capabilities', [], group=ctx.cfg_section)
        # If a forked daemon dies, oslo.privsep "restarts" it through sudo.
        # After the drop that must fail at once, never prompt or escalate:
        # the service exits and its supervisor starts it afresh.
        cfg.CONF.set_override('helper_command', '/bin/false',
                              group=ctx.cfg_section)
        cfg.CONF.set_override('thread_pool_size', contexts.THREADS,
                              group=ctx.cfg_section)
        guard.fork_daemon(ctx)
    return 'system' if system else 'user'


def helper_path():
    """The helper of the installation running this volsepd: the path the
    sudoers rule names for the default venv."""
    return os.path.join(os.path.dirname(sys.executable),
                        'volsep-privsep-helper')


def _no_new_privs():
    with open('/proc/self/status') as f:
        return any(line.split() == ['NoNewPrivs:', '1'] for line in f)


def _start_through_sudo():
    if _no_new_privs():
        raise SudoUnavailable(
            'no_new_privs is set (systemd NoNewPrivileges=yes?), so sudo '
            'cannot gain root: use etc/systemd/volsepd-sudo.service, or '
            'start volsepd as root without --privsep-start sudo')
    # The helper accepts only a socket in a private directory under /tmp;
    # oslo.privsep makes that directory with tempfile, so pin it there
    # whatever TMPDIR says.
    tempfile.tempdir = '/tmp'
    helper = helper_path()
    for name, pypath in privsep_helper.CONTEXTS.items():
        ctx = next(c for c in contexts.ALL if c.pypath == pypath)
        # Without -n a missing sudoers rule would wait for a password
        # nobody can type; with it, sudo fails at once and says why.
        cfg.CONF.set_override('helper_command', f'{SUDO} -n -- {helper} '
                              f'{name}', group=ctx.cfg_section)
        try:
            guard.start_through_helper(ctx)
        except Exception as err:
            raise SudoUnavailable(
                f'could not start the {name} daemon with "sudo -n {helper} '
                f'{name}": {err} (is etc/sudoers.d/volsep installed for '
                f'this user and venv?)') from None


def drop_privileges(user):
    """Become ``user`` (all uids, gids and groups); irreversible."""
    entry = pwd.getpwnam(user)
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    os.setgroups(groups)
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise DropFailed(f'could regain root after dropping to {user}')
    os.environ.update(HOME=entry.pw_dir, USER=entry.pw_name,
                      LOGNAME=entry.pw_name)


def primary_group(user):
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
