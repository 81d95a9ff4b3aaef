"""How volsep's root daemons start, what they run and what they hold.

oslo.privsep's daemon imports whatever module a request names and only then
checks that it named an entrypoint, so a compromised frontend could run the
import-time code of any installed module as root (venv's __main__ parses
arguments and raises SystemExit, which ends the worker thread without a
reply). GuardedDaemon knows volsep's entrypoints for its context, by name,
before the first request, and refuses every other name before anything is
imported; an entrypoint that raises SystemExit or KeyboardInterrupt still
gets a reply and leaves the worker running.

A daemon forked from volsepd would also inherit what volsepd had open (the
API's listening socket, the other daemon's channel): it closes every
descriptor but its own channel and stdio before serving.

oslo.privsep's own forking channel builds the stock daemon inside its
constructor, so the fork and the sudo helper's connect are done here, with
oslo.privsep's channel, logging and daemon classes.
"""

import contextlib
import ctypes
import importlib
import os
import socket
import struct
import sys
import traceback

from oslo_privsep import comm
from oslo_privsep import daemon

from volsep.privileged import audit
from volsep.privileged import contexts
from volsep.privileged import errors


def entrypoint_names(context):
    """The request names that reach ``context``'s entrypoints."""
    names = set()
    for module_name in contexts.MODULES[context.cfg_section]:
        module = importlib.import_module(module_name)
        for attr, value in vars(module).items():
            if context.is_entrypoint(value):
                names.add(f'{module_name}.{attr}')
    return frozenset(names)


def _error_reply(exc):
    cls = type(exc)
    return (comm.Message.ERR.value, f'{cls.__module__}.{cls.__name__}',
            exc.args, '')


class GuardedDaemon(daemon.Daemon):
    def __init__(self, channel, context):
        super().__init__(channel, context)
        self.names = entrypoint_names(context)

    def _process_cmd(self, msgid, cmd, *args):
        if cmd == comm.Message.CALL and (not args or
                                         args[0] not in self.names):
            name = args[0] if args else None
            return _error_reply(errors.UnknownEntrypoint(
                f'{str(name)[:200]!r} is not a volsep entrypoint'))
        try:
            return super()._process_cmd(msgid, cmd, *args)
        except BaseException as exc:  # noqa: B902 - see the module docstring
            traceback.print_exc()
            return _error_reply(errors.PrivilegedError(
                f'a root call ended with {type(exc).__name__}'))


def release_inherited(keep):
    """Let go of every inherited descriptor above stdio but ``keep``.

    Each is pointed at /dev/null rather than closed: Python objects
    inherited from the parent still own those numbers, and one of them
    closing "its" descriptor later must not close a file a root call has
    open by then."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for name in os.listdir('/proc/self/fd'):
            fd = int(name)
            if fd > 2 and fd != devnull and fd not in keep:
                try:
                    os.dup2(devnull, fd, inheritable=False)
                except OSError:
                    pass  # the descriptor listdir itself had open
    finally:
        os.close(devnull)


def serve(sock, context):
    """Be ``context``'s root daemon on ``sock`` until the channel closes."""
    release_inherited({sock.fileno()})
    channel = comm.ServerChannel(sock)
    daemon.replace_logging(daemon.PrivsepLogHandler(
        channel, processName=str(context)))
    try:
        GuardedDaemon(channel, context).run()
    finally:
        audit.flush_streams()


def fork_daemon(context):
    """Fork ``context``'s daemon (as the caller: root in system mode) and
    connect ``context`` to it; returns the daemon's pid."""
    ours, theirs = socket.socketpair()
    for end in (ours, theirs):
        daemon.set_cloexec(end)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            serve(theirs, context)
        finally:
            os._exit(0)
    theirs.close()
    context.channel = daemon._ClientChannel(ours, context)
    return pid


class WrongPeer(Exception):
    pass


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def _filesystem_ids(uid, gid):
    """setfsuid/setfsgid to ``uid``/``gid`` for the duration (this
    thread); the calls report no errors, so each is read back."""
    if os.geteuid() != 0:   # they are the caller's already
        yield
        return
    groups = os.getgroups()
    os.setgroups([gid])   # root's own groups must not open the way either
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    try:
        if _libc.setfsuid(uid) != uid or _libc.setfsgid(gid) != gid:
            raise WrongPeer(f'could not take the filesystem ids {uid}/{gid}')
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)
        os.setgroups(groups)


def connect_and_serve(context, sock_path, peer_uid=None, peer_gid=None):
    """The sudo helper's part: connect to the frontend's socket, then serve
    from a child so that sudo's process can return. With ``peer_uid``, the
    listening end must belong to that uid (SO_PEERCRED): connect() follows
    symlinks, and whoever can rename things in the socket's directory
    could otherwise point root at any socket on the host."""
    sock = socket.socket(socket.AF_UNIX)
    if peer_uid is None:
        sock.connect(sock_path)
    else:
        # With the caller's filesystem ids (which also clear the DAC
        # capabilities for the lookup), root reaches only sockets the
        # caller could reach itself.
        with _filesystem_ids(peer_uid, peer_gid):
            sock.connect(sock_path)
    daemon.set_cloexec(sock)
    pid, uid, _ = struct.unpack('3i', sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize('3i')))
    if peer_uid is not None and uid != peer_uid:
        sock.close()
        raise WrongPeer(f'{sock_path} is a socket of uid {uid}, not of '
                        f'uid {peer_uid}')
    if os.fork() != 0:
        return
    # Once sudo's process returns, this daemon's parent is init: records
    # name the process at the other end of the channel instead.
    audit.set_caller(pid)
    try:
        serve(sock, context)
    finally:
        os._exit(0)


def ping(context, timeout):
    """Round trip through one of the daemon's worker threads; raises if no
    answer comes within ``timeout`` seconds."""
    reply = context.channel.send_recv((comm.Message.PING.value,), timeout)
    if reply[0] != comm.Message.PONG:
        raise errors.PrivilegedError(f'{context} answered a ping with '
                                     f'{reply!r}')
