"""volsepd: the unprivileged API daemon.

Started as root (system mode) it prepares its directory, binds its socket,
forks the privileged daemons and then runs as --user. Started as anyone
else (user mode) it does the same without privileges. With --privsep-start
sudo (sudo mode) it is started as --user itself, on a directory that
`volsepd --prepare` made as root, and starts the privileged daemons through
the sudoers rule in etc/sudoers.d/volsep; their configuration is then the
fixed /etc/volsep/privileged.conf and the socket is DIR/run/volsepd.sock.
Everything lives under --state-dir unless configured otherwise:

    DIR/volsepd.lock      held (flock) for the service's whole life: one
                          volsepd per state directory; holds its pid
    DIR/privileged.conf   the root side's allow-list (written if absent)
    DIR/audit.log         the root side's audit log
    DIR/pools/default/    the default pool
    DIR/state/            the frontend's state (owned by the frontend user):
                          pools.xml, domains/NAME.xml, running/NAME
    DIR/volsepd.sock      the API socket
"""

import asyncio
import concurrent.futures
import fcntl
import os
import pwd
import signal
import socket
import stat
import sys
import threading

from oslo_config import cfg
from oslo_log import log as logging

from volsep.frontend import admission
from volsep.frontend import api as api_module
from volsep.frontend import events
from volsep.frontend import manager as manager_module
from volsep.frontend import policy as policy_module
from volsep.frontend import privsep_start
from volsep.privileged import config as root_config
from volsep.privileged import contexts
from volsep.privileged import files
from volsep.privileged import guard
from volsep.privileged import ownership

LOG = logging.getLogger('volsep.daemon')
CONF = cfg.CONF

OPTS = [
    cfg.StrOpt('state-dir', default='/var/lib/volsep',
               help='Directory holding state, socket, audit log and the '
                    'default pool.'),
    cfg.StrOpt('user', default='volsep',
               help='User the frontend runs as when started as root.'),
    cfg.StrOpt('socket', help='API socket (default: STATE_DIR/volsepd.sock).'),
    cfg.StrOpt('policy-file',
               help='JSON rule file: who may call which methods.'),
    cfg.StrOpt('privileged-config',
               help='Root-owned configuration of the privileged side '
                    '(default: STATE_DIR/privileged.conf, written if absent).'),
    cfg.FloatOpt('privileged-ping-interval', default=2.0, min=0.1,
                 help='Seconds between health checks of the root daemons.'),
    cfg.FloatOpt('privileged-ping-timeout', default=10.0, min=0.1,
                 help='A root daemon that does not answer a ping within '
                      'this many seconds is taken as wedged: volsepd '
                      'exits 1 so its supervisor restarts the service.'),
    cfg.IntOpt('socket-mode', default=0o666,
               help='Mode of the API socket; the policy decides what each '
                    'caller may do.'),
    cfg.StrOpt('privsep-start', default='fork', choices=('fork', 'sudo'),
               help='How the root daemons start: "fork" from volsepd '
                    'itself (started as root: system mode; otherwise user '
                    'mode), or "sudo" for a volsepd started as --user that '
                    'runs volsep-privsep-helper through sudo.'),
    cfg.BoolOpt('prepare', default=False,
                help='As root: make --state-dir ready for a sudo-mode '
                     'service running as --user (and write '
                     '/etc/volsep/privileged.conf if absent), then exit.'),
]

# Admission and timeouts (admission.py): every local user can connect.
LIMIT_OPTS = [
    cfg.IntOpt('max-connections', default=admission.Limits.max_connections,
               min=1, help='Connections in all; the descriptor limit is '
                           'raised to fit.'),
    cfg.IntOpt('max-connections-per-uid',
               default=admission.Limits.max_connections_per_uid, min=1,
               help='Connections any one uid may hold.'),
    cfg.IntOpt('reserved-connections',
               default=admission.Limits.reserved_connections, min=0,
               help='Connections only root, the service user and callers '
                    'the policy allows something may take.'),
    cfg.IntOpt('max-request-bytes',
               default=admission.Limits.max_request_bytes, min=1024,
               help='Longest request line; bounds buffered input per '
                    'connection.'),
    cfg.FloatOpt('idle-timeout', default=admission.Limits.idle_timeout,
                 min=0, help='Seconds a connection may wait between '
                             'requests (0: no limit).'),
    cfg.FloatOpt('request-timeout',
                 default=admission.Limits.request_timeout, min=0,
                 help='Seconds from the first byte of a request line to '
                      'its newline (0: no limit).'),
    cfg.FloatOpt('stream-timeout', default=admission.Limits.stream_timeout,
                 min=0, help='Seconds an import, export or reply may make '
                             'no progress before it is aborted (0: no '
                             'limit).'),
]


def _limits():
    try:
        limits = admission.Limits(
            max_connections=CONF.max_connections,
            max_connections_per_uid=CONF.max_connections_per_uid,
            reserved_connections=CONF.reserved_connections,
            max_request_bytes=CONF.max_request_bytes,
            idle_timeout=CONF.idle_timeout,
            request_timeout=CONF.request_timeout,
            stream_timeout=CONF.stream_timeout)
    except ValueError as err:
        raise SystemExit(f'volsepd: {err}') from None
    return admission.fit_descriptor_limit(limits)


# The descriptor holding DIR/volsepd.lock: open until the process ends.
_state_lock = None


def _lock_state_directory(state_dir, user, system):
    """Take DIR/volsepd.lock (flock, not waiting) before anything else is
    written, and hold it for the life of the service: a second volsepd on
    the same directory, whatever its --socket, refuses to start. The file
    belongs to the service user (who may open it when started without
    root) and names the holder's pid."""
    global _state_lock
    path = os.path.join(state_dir, 'volsepd.lock')
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW |
                     os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise SystemExit(f'volsepd: cannot open {path}: {err.strerror}')
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors='replace').strip()
        os.close(fd)
        who = f'another volsepd (pid {holder})' if holder.isdigit() \
            else 'another volsepd'
        raise SystemExit(f'volsepd: state directory {state_dir} is in use '
                         f'by {who}, which holds {path}; stop it first or '
                         f'give this one its own --state-dir')
    if system:
        entry = pwd.getpwnam(user)
        os.fchown(fd, entry.pw_uid, entry.pw_gid)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
    _state_lock = fd


def _check_private(state_dir):
    try:
        ownership.check(state_dir, os.geteuid())
    except ownership.NotPrivate as err:
        raise SystemExit(f'volsepd: refusing --state-dir {state_dir}: {err}')


def _prepare_directory(state_dir, user, system):
    _check_private(state_dir)
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    # Again once it exists: someone may have made it between the check
    # and makedirs (in a sticky /var/tmp, say). From here on nobody else
    # can change what is inside it.
    _check_private(state_dir)
    _lock_state_directory(state_dir, user, system)
    os.makedirs(os.path.join(state_dir, 'pools'), mode=0o755, exist_ok=True)
    frontend_state = os.path.join(state_dir, 'state')
    os.makedirs(frontend_state, mode=0o700, exist_ok=True)
    if system:
        entry = pwd.getpwnam(user)
        os.chown(frontend_state, entry.pw_uid, entry.pw_gid,
                 follow_symlinks=False)
    return frontend_state


def _write_root_config(path, state_dir):
    """Write the root side's configuration for ``state_dir`` unless
    ``path`` exists; return whether it was written."""
    if os.path.exists(path):
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, 'w') as f:
        f.write('[privileged]\n'
                f'allowed_roots = {os.path.join(state_dir, "pools")}\n'
                f'audit_log = {os.path.join(state_dir, "audit.log")}\n')
    return True


def _embedded_root_config(state_dir):
    path = os.path.join(state_dir, 'privileged.conf')
    _write_root_config(path, state_dir)
    return path


def _owned_directory(path, user, mode):
    os.makedirs(path, mode=mode, exist_ok=True)
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    os.chmod(path, mode, follow_symlinks=False)


def _prepare_for_sudo(state_dir, user):
    """--prepare: what a root volsepd would make for itself, plus the
    socket directory, for a service that never runs as root. Everything
    the root daemons use (DIR, DIR/pools, the audit log) stays root's."""
    if os.geteuid() != 0:
        raise SystemExit('volsepd: --prepare must run as root')
    _prepare_directory(state_dir, user, True)
    # The service must reach state/ and run/ through DIR whatever the
    # umask (the unit's is 0077); nothing in DIR itself is secret.
    os.chmod(state_dir, 0o755)
    _owned_directory(os.path.join(state_dir, 'run'), user, 0o755)
    os.makedirs(os.path.dirname(root_config.DEFAULT_CONFIG_PATH),
                mode=0o755, exist_ok=True)
    path = root_config.DEFAULT_CONFIG_PATH
    if _write_root_config(path, state_dir):
        print(f'volsepd: wrote {path} (allowed_roots = {state_dir}/pools)',
              file=sys.stderr)
    else:
        print(f'volsepd: kept {path}: its allowed_roots must include '
              f'{state_dir}/pools', file=sys.stderr)
    print(f'volsepd: {state_dir} is ready for "volsepd --privsep-start sudo '
          f'--state-dir {state_dir}" run as {user}', file=sys.stderr)
    return 0


def _sudo_mode_directory(state_dir):
    """The state directory of a sudo-mode service: made by --prepare,
    root's except the parts the service itself writes."""
    if os.geteuid() == 0:
        raise SystemExit('volsepd: --privsep-start sudo is for a service '
                         'started as its own user; started as root, '
                         'volsepd forks its root daemons itself')
    if CONF.privileged_config not in (None, root_config.DEFAULT_CONFIG_PATH):
        raise SystemExit(f'volsepd: with --privsep-start sudo the root side '
                         f'reads only {root_config.DEFAULT_CONFIG_PATH}; '
                         f'--privileged-config cannot choose another')
    _check_private(state_dir)
    expected = [(state_dir, 0), (os.path.join(state_dir, 'state'),
                                 os.getuid()),
                (os.path.join(state_dir, 'run'), os.getuid())]
    for path, uid in expected:
        try:
            st = os.lstat(path)
            ready = stat.S_ISDIR(st.st_mode) and st.st_uid == uid
        except FileNotFoundError:
            ready = False
        if not ready:
            raise SystemExit(
                f'volsepd: {state_dir} is not prepared for sudo mode '
                f'({path} must be a directory of uid {uid}): run '
                f'"volsepd --prepare --state-dir {state_dir} --user '
                f'{pwd.getpwuid(os.getuid()).pw_name}" as root first')
    _lock_state_directory(state_dir, None, False)
    return os.path.join(state_dir, 'state')


def _default_socket(state_dir, sudo):
    # A sudo-mode service cannot create files in its root-owned DIR.
    return os.path.join(state_dir, *(['run'] if sudo else []),
                        'volsepd.sock')


def _bind(path, mode, user, system):
    if os.path.exists(path):
        if not socket.socket(socket.AF_UNIX).connect_ex(path):
            raise SystemExit(f'volsepd: {path} is in use by a running '
                             f'volsepd')
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, mode)
    if system:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    sock.listen(128)
    return sock


def _ensure_default_pool(manager, state_dir):
    if 'default' not in manager.pools:
        pool_dir = os.path.join(state_dir, 'pools', 'default')
        options = [('dir_path', pool_dir)]
        if not files.reflink_supported(os.path.join(state_dir, 'pools')):
            LOG.warning('%s has no reflink support: the default pool makes '
                        'sparse copies', state_dir)
            options.append(('setup_check', 'no'))
        manager.add_pool('default', 'file-reflink', options)
    if manager.default_pool is None:
        manager.set_default_pool('default')


def _report_orphans(manager):
    """Name, in the log and on stderr, what lies in a pool that no volume
    owns (files of a volume another service recorded, say)."""
    try:
        found = manager.all_orphans()
    except Exception as err:
        LOG.warning('could not scan the pools for orphans: %s', err)
        return
    for pool, orphans in found.items():
        names = ', '.join(o['path'] for o in orphans)
        LOG.warning('pool %s: %d entries no volume owns: %s', pool,
                    len(orphans), names)
        print(f'volsepd: pool {pool}: {len(orphans)} entries no volume '
              f'owns: {names} (see "volsep pool orphans {pool}": --remove '
              f'deletes them, "volsep pool adopt" records a volume '
              f'directory)', file=sys.stderr, flush=True)


def _channel_down(channel):
    """Whether a root daemon's channel is gone. oslo.privsep's reader
    thread fails the calls waiting for a reply only when it reads EOF; a
    daemon killed with requests still unread makes it read ECONNRESET
    instead, and it dies leaving those calls waiting for good (and volsepd
    unable to exit). Fail them as the EOF path would."""
    if channel is None:
        return True
    if channel.running and channel.reader_thread.is_alive():
        return False
    with channel.lock:
        for reply in channel.outstanding_msgs.values():
            reply.set_exception(OSError('the privileged daemon died'))
        channel.running = False
    return True


def _privileged_fault(deadline):
    """Why a root daemon can no longer serve, or None."""
    for ctx in contexts.ALL:
        if _channel_down(ctx.channel):
            return 'a privileged daemon died'
        try:
            guard.ping(ctx, deadline)
        except Exception as err:
            if _channel_down(ctx.channel):   # it died while we pinged
                return 'a privileged daemon died'
            return (f'a privileged daemon ({ctx.cfg_section}) did not answer '
                    f'a ping within {deadline} s: {err}')
    return None


_EXIT_GRACE = 5.0   # seconds


async def _watch_privileged(stop):
    """A dropped frontend cannot restart a root daemon: if one dies or
    stops answering, stop with an error so the supervisor restarts the
    whole service."""
    loop = asyncio.get_running_loop()
    # Its own thread: requests stuck on a dead daemon can fill the default
    # executor, and the watchdog must still see that daemon is gone.
    checker = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix='volsep-watchdog')
    while not stop.done():
        fault = await loop.run_in_executor(checker, _privileged_fault,
                                           CONF.privileged_ping_timeout)
        if fault is not None and not stop.done():
            LOG.error('%s; stopping', fault)
            print(f'volsepd: {fault}; stopping', file=sys.stderr, flush=True)
            # Calls waiting on a daemon that neither answers nor closes its
            # channel (one SIGKILLed in an uninterruptible wait) never
            # return, and exiting waits for their threads: end regardless
            # after a grace period. The state is crash-safe by design.
            deadline = threading.Timer(_EXIT_GRACE, os._exit, (1,))
            deadline.daemon = True
            deadline.start()
            stop.set_result(1)
            return
        await asyncio.sleep(CONF.privileged_ping_interval)


async def _serve(api, sock, hub):
    loop = asyncio.get_running_loop()
    hub.bind(loop)
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or
                                stop.set_result(0))
    server = await asyncio.start_unix_server(
        api.handle, sock=sock, limit=api.limits.max_request_bytes,
        backlog=max(128, api.limits.max_connections))
    watchdog = asyncio.ensure_future(_watch_privileged(stop))
    LOG.info('volsepd ready on %s', sock.getsockname())
    print(f'volsepd: ready on {sock.getsockname()}', file=sys.stderr,
          flush=True)
    status = await stop
    watchdog.cancel()
    server.close()
    await server.wait_closed()
    LOG.info('volsepd stopped')
    return status


def main(argv=None):
    CONF.register_cli_opts(OPTS + LIMIT_OPTS)
    logging.register_options(CONF)
    try:
        CONF(sys.argv[1:] if argv is None else argv, project='volsep',
             prog='volsepd')
        for opt in OPTS:  # a bad value in a file shows only when read
            getattr(CONF, opt.dest)
    except cfg.Error as err:
        # A missing or malformed file, or a bad value: one line, usage exit.
        print(f'volsepd: {err}'.splitlines()[0], file=sys.stderr)
        return 2
    except SystemExit as done:
        # oslo.config has printed its one line (a bad value in a file for
        # a command-line option) or the help.
        return 2 if done.code else 0
    logging.setup(CONF, 'volsep')
    state_dir = os.path.abspath(CONF.state_dir)
    if CONF.prepare:
        return _prepare_for_sudo(state_dir, CONF.user)
    limits = _limits()
    system = os.geteuid() == 0
    sudo = CONF.privsep_start == 'sudo'
    if sudo:
        frontend_state = _sudo_mode_directory(state_dir)
    else:
        frontend_state = _prepare_directory(state_dir, CONF.user, system)
        os.environ[root_config.CONFIG_ENV] = (
            CONF.privileged_config or _embedded_root_config(state_dir))
    sock = _bind(CONF.socket or _default_socket(state_dir, sudo),
                 CONF.socket_mode, CONF.user, system)
    try:
        mode = privsep_start.start_daemons(CONF.privsep_start)
    except privsep_start.SudoUnavailable as err:
        print(f'volsepd: {err}', file=sys.stderr)
        return 1
    if system:
        privsep_start.drop_privileges(CONF.user)
        if not os.access(frontend_state, os.W_OK | os.X_OK):
            LOG.error('user %s cannot reach %s: choose a --state-dir '
                      'outside private directories such as /root',
                      CONF.user, frontend_state)
            return 1
    LOG.info('running in %s mode as uid %d', mode, os.getuid())
    policy = (policy_module.Policy.load(CONF.policy_file)
              if CONF.policy_file else
              policy_module.Policy.default(pwd.getpwuid(os.getuid()).pw_name))
    manager = manager_module.Manager(frontend_state)
    manager.reconcile()
    _ensure_default_pool(manager, state_dir)
    for name in manager.pools_copying_fully():
        print(f'volsepd: warning: pool {name} (file-reflink) is on a '
              f'filesystem without reflink: snapshots, commits and clones '
              f'are full sparse copies', file=sys.stderr, flush=True)
    _report_orphans(manager)
    hub = events.Hub()
    return asyncio.run(_serve(api_module.Api(manager, policy, hub,
                                             limits=limits), sock, hub))


if __name__ == '__main__':
    sys.exit(main())
