"""volsep-privsep-helper: the only command sudo may run for volsep.

oslo.privsep's sudo start method runs HELPER --privsep_context PYPATH
--privsep_sock_path PATH. A sudoers rule for privsep-helper itself would
be full root (FACTS.md), and a sudoers '*' also matches spaces, so extra
arguments could be smuggled in. This wrapper accepts exactly

    volsep-privsep-helper NAME --privsep_context PYPATH --privsep_sock_path PATH

where NAME picks one of volsep's contexts, PYPATH must be that context,
PATH must be a private temporary socket of the user who ran sudo, and the
configuration file is fixed. Anything else exits 2 without starting.
"""

import os
import pwd
import re
import stat
import sys

CONFIG_FILE = '/etc/volsep/volsep.conf'
CONTEXTS = {'files': 'volsep.privileged.contexts.file_ops',
            'jobs': 'volsep.privileged.contexts.long_jobs'}
_SOCKET = re.compile(r'/tmp/tmp[A-Za-z0-9_]{1,64}/privsep\.sock')


class Refused(Exception):
    pass


def validate(argv, caller_uid):
    """The oslo helper's arguments for an accepted argv, else Refused."""
    if len(argv) != 5 or argv[1] != '--privsep_context' or \
            argv[3] != '--privsep_sock_path':
        raise Refused('expected NAME --privsep_context PYPATH '
                      '--privsep_sock_path PATH')
    name, pypath, sock_path = argv[0], argv[2], argv[4]
    if CONTEXTS.get(name) != pypath:
        raise Refused(f'context {name!r} / {pypath!r} is not volsep\'s')
    if not _SOCKET.fullmatch(sock_path):
        raise Refused(f'socket path {sock_path!r} is not a private temp dir')
    directory = os.lstat(os.path.dirname(sock_path))
    if (not stat.S_ISDIR(directory.st_mode) or
            directory.st_uid != caller_uid or
            stat.S_IMODE(directory.st_mode) != 0o700):
        raise Refused(f'{os.path.dirname(sock_path)} must be a 0700 '
                      f'directory of uid {caller_uid}')
    return ['--config-file', CONFIG_FILE, '--privsep_context', pypath,
            '--privsep_sock_path', sock_path]


def main():
    caller = os.environ.get('SUDO_UID')
    try:
        if caller is None or not caller.isdigit():
            raise Refused('must be run through sudo')
        args = validate(sys.argv[1:], int(caller))
        caller_gid = os.environ.get('SUDO_GID', '')
        if not caller_gid.isdigit():
            caller_gid = pwd.getpwuid(int(caller)).pw_gid
    except (Refused, OSError, KeyError) as err:
        print(f'volsep-privsep-helper: refused: {err}', file=sys.stderr)
        return 2
    # The guarded daemon (privileged/guard.py), never oslo.privsep's stock
    # helper_main, whose daemon imports whatever a request names.
    from oslo_config import cfg
    from volsep.privileged import config as root_config
    from volsep.privileged import contexts
    from volsep.privileged import guard
    # The root configuration is the fixed, root-owned default: never a
    # path from the caller's environment, even if sudo were told to keep it.
    os.environ.pop(root_config.CONFIG_ENV, None)
    config_files = [CONFIG_FILE] if os.path.exists(CONFIG_FILE) else []
    cfg.CONF(args=[], default_config_files=config_files, project='volsep')
    context = next(ctx for ctx in contexts.ALL if ctx.pypath == args[3])
    cfg.CONF.set_override('thread_pool_size', contexts.THREADS,
                          group=context.cfg_section)
    try:
        reset_limits()
        guard.connect_and_serve(context, args[5], peer_uid=int(caller),
                                peer_gid=int(caller_gid))
    except (Refused, guard.WrongPeer, OSError) as err:
        print(f'volsep-privsep-helper: refused: {err}', file=sys.stderr)
        return 2
    return 0


# sudo gives the command the caller's resource limits: a root daemon
# started under a small RLIMIT_FSIZE could not append to the audit log
# (after running the call), one under a small RLIMIT_NOFILE or RLIMIT_AS
# would fail where volsepd's would not. The helper may lack
# CAP_SYS_RESOURCE (volsepd-sudo.service's bounding set), so it raises
# each soft limit to its hard limit and refuses a lowered hard limit on
# the size of the files it writes.
_RAISED = ('RLIMIT_FSIZE', 'RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_DATA',
           'RLIMIT_NOFILE', 'RLIMIT_NPROC', 'RLIMIT_MEMLOCK')


def reset_limits():
    import resource
    for name in _RAISED:
        limit = getattr(resource, name)
        _, hard = resource.getrlimit(limit)
        resource.setrlimit(limit, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_FSIZE)[1] != resource.RLIM_INFINITY:
        raise Refused('RLIMIT_FSIZE must be unlimited: the root side '
                      'appends to its audit log')
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


if __name__ == '__main__':
    sys.exit(main())
