"""Descriptors handed from volsepd to a root daemon, claimed by token.

oslo.privsep's channel carries msgpack only, so each daemon has a second
socket (SOCK_SEQPACKET, one message per descriptor) on which volsepd sends
a one-time token with exactly one descriptor (SCM_RIGHTS). An entrypoint
then names the token, never a path: what the root side touches is the
file the caller itself opened, with the access the caller had.

volsepd's side (an Outbox per daemon) and the daemon's side (the Inbox)
are both here, so the message format has one definition. A descriptor
nobody claims within CLAIM_SECONDS is closed.
"""

import os
import secrets
import socket
import threading
import time

from volsep.privileged import errors

TOKEN_BYTES = 16
CLAIM_SECONDS = 30.0
# A message with several descriptors is refused whole; asking for a few
# more than one lets the receiver see (and close) the extras.
_MAX_FDS = 4

# volsepd's outboxes, by context section; empty in a root daemon.
_outboxes = {}


def pair():
    """The two ends of a new handover socket: (volsepd's, the daemon's)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class Outbox:
    """volsepd's end: sends a descriptor, returns the token to claim it."""

    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()

    def give(self, fd):
        token = secrets.token_hex(TOKEN_BYTES)
        with self.lock:
            socket.send_fds(self.sock, [token.encode()], [fd])
        return token


def register(context, sock):
    _outboxes[context.cfg_section] = Outbox(sock)


def outbox(context):
    """The context's outbox, or None when its daemon has no handover
    socket (then descriptors cannot reach it)."""
    return _outboxes.get(context.cfg_section)


def _close_all(fds):
    for fd in fds:
        os.close(fd)


class Inbox:
    """The daemon's end: a thread files each descriptor under its token
    until an entrypoint claims it or it expires."""

    def __init__(self, sock):
        self.sock = sock
        self.cond = threading.Condition()
        self.waiting = {}   # token -> (fd, expiry)

    def start(self):
        threading.Thread(target=self._receive, name='handover',
                         daemon=True).start()

    def _receive(self):
        self.sock.settimeout(1.0)
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(
                    self.sock, 64, _MAX_FDS, socket.MSG_CMSG_CLOEXEC)
            except TimeoutError:
                self._expire()
                continue
            except OSError:
                return
            if not data and not fds:
                return   # volsepd closed its end
            token = data.decode('ascii', 'replace')
            if len(fds) != 1 or len(token) != 2 * TOKEN_BYTES:
                _close_all(fds)
                continue
            with self.cond:
                self.waiting[token] = (fds[0], time.monotonic() +
                                       CLAIM_SECONDS)
                self.cond.notify_all()
            self._expire()

    def _expire(self):
        now = time.monotonic()
        with self.cond:
            stale = [t for t, (_, expiry) in self.waiting.items()
                     if expiry < now]
            _close_all(self.waiting.pop(t)[0] for t in stale)

    def claim(self, token, wait=5.0):
        """The descriptor sent under ``token`` (the caller closes it). The
        send precedes the call naming it, but may still be in flight."""
        if type(token) is not str or len(token) != 2 * TOKEN_BYTES:
            raise errors.InvalidArgument('a descriptor token is a string of '
                                         f'{2 * TOKEN_BYTES} characters')
        with self.cond:
            if not self.cond.wait_for(lambda: token in self.waiting, wait):
                raise errors.InvalidArgument(
                    'no descriptor was handed over under that token (used, '
                    'expired, or never sent)')
            return self.waiting.pop(token)[0]


_inbox = None


def serve(sock):
    """In a root daemon: receive descriptors on ``sock`` from now on."""
    global _inbox
    _inbox = Inbox(sock)
    _inbox.start()


def claim(token):
    if _inbox is None:
        raise errors.InvalidArgument('this daemon takes no descriptors')
    return _inbox.claim(token)
