"""Start the privileged daemons and, in system mode, drop to a plain user.

System mode (started as root): both privsep daemons are forked while the
process is still root, then this process gives up root for good. User mode
(started by anyone else): the same daemons and the same code path, with no
capabilities to keep.
"""

import ctypes
import grp
import os
import pwd

from oslo_config import cfg
from volsep.privileged import contexts
from volsep.privileged import guard

_PR_SET_NO_NEW_PRIVS = 38


class DropFailed(Exception):
    pass


def _ensure_config_parsed():
    # privsep reads its options through cfg.CONF, which must have been
    # parsed; volsepd parses its own command line first, tests do not.
    if 'config_file' not in cfg.CONF:
        cfg.CONF(args=[], project='volsep')


# Worker threads per daemon: enough for the pipelined writes of several
# streams and a few long jobs at once, with one left for the watchdog's
# ping (which goes through the same pool, so a wedged pool is noticed).
THREADS = 16


def start_daemons():
    """Fork one daemon per privileged context; return 'system' or 'user'."""
    _ensure_config_parsed()
    system = os.geteuid() == 0
    for ctx in contexts.ALL:
        if not system:
            cfg.CONF.set_override('capabilities', [], group=ctx.cfg_section)
        # If a forked daemon dies, oslo.privsep "restarts" it through sudo.
        # After the drop that must fail at once, never prompt or escalate:
        # the service exits and its supervisor starts it afresh.
        cfg.CONF.set_override('helper_command', '/bin/false',
                              group=ctx.cfg_section)
        cfg.CONF.set_override('thread_pool_size', THREADS,
                              group=ctx.cfg_section)
        guard.fork_daemon(ctx)
    return 'system' if system else 'user'


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
