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
descriptor but its own channel, its handover socket and stdio before
serving.

Each daemon also gets a handover socket (handover.py) beside its privsep
channel, for the descriptors volsepd passes on: made with the channel when
forking; started through sudo, the helper makes the pair and sends
volsepd's end over the freshly connected channel before anything else is
said on it, so the channel itself stays oslo.privsep's.

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
import subprocess
import sys
import tempfile
import traceback

from oslo_privsep import comm
from oslo_privsep import daemon

from volsep.privileged import audit
from volsep.privileged import contexts
from volsep.privileged import errors
from volsep.privileged import handover

# The one byte that carries the handover socket over a new sudo channel.
_HANDOVER_MARK = b'H'


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


def serve(sock, context, inbox):
    """Be ``context``'s root daemon on ``sock`` until the channel closes,
    taking descriptors on ``inbox``."""
    release_inherited({sock.fileno(), inbox.fileno()})
    handover.serve(inbox)
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
    our_box, their_box = handover.pair()
    for end in (ours, theirs, our_box, their_box):
        daemon.set_cloexec(end)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            our_box.close()
            serve(theirs, context, their_box)
        finally:
            os._exit(0)
    theirs.close()
    their_box.close()
    context.channel = daemon._ClientChannel(ours, context)
    handover.register(context, our_box)
    return pid


def start_through_helper(context, timeout=60):
    """volsepd's part of the sudo start (oslo.privsep's ROOTWRAP client,
    plus the handover socket): listen in a private directory, run the
    context's helper_command for it, take the helper's connection and,
    first on it, its handover socket."""
    directory = tempfile.mkdtemp()   # 0700
    path = os.path.join(directory, 'privsep.sock')
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(path)
        listener.listen(1)
        proc = subprocess.run(context.helper_command(path), timeout=timeout)
        if proc.returncode != 0:
            raise daemon.FailedToDropPrivileges(
                f'privsep helper command exited non-zero '
                f'({proc.returncode})')
        listener.settimeout(timeout)
        sock, _ = listener.accept()
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.rmdir(directory)
    sock.settimeout(timeout)
    mark, fds, _, _ = socket.recv_fds(sock, 1, 1, socket.MSG_CMSG_CLOEXEC)
    sock.settimeout(None)
    if mark != _HANDOVER_MARK or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        sock.close()
        raise daemon.FailedToDropPrivileges(
            'the privsep helper did not hand over its descriptor socket')
    box = socket.socket(fileno=fds[0])
    daemon.set_cloexec(sock)
    context.channel = daemon._ClientChannel(sock, context)
    handover.register(context, box)


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
    ours, theirs = handover.pair()
    daemon.set_cloexec(theirs)
    socket.send_fds(sock, [_HANDOVER_MARK], [ours.fileno()])
    ours.close()
    if os.fork() != 0:
        return
    # Once sudo's process returns, this daemon's parent is init: records
    # name the process at the other end of the channel instead.
    audit.set_caller(pid)
    try:
        serve(sock, context, theirs)
    finally:
        os._exit(0)


def ping(context, timeout):
    """Round trip through one of the daemon's worker threads; raises if no
    answer comes within ``timeout`` seconds."""
    reply = context.channel.send_recv((comm.Message.PING.value,), timeout)
    if reply[0] != comm.Message.PONG:
        raise errors.PrivilegedError(f'{context} answered a ping with '
                                     f'{reply!r}')
