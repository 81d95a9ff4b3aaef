"""Taking one descriptor from a client over its API connection.

asyncio's transports read with recv(), which drops ancillary data, so a
descriptor cannot arrive with a request. It comes on request instead: the
handler stops the transport reading, replies that it wants the descriptor,
and receives one byte with exactly one SCM_RIGHTS descriptor with
recvmsg() on a duplicate of the connection's socket (in a thread, with a
deadline), then lets the transport read again. A client that pipelines
anything before the byte gets nothing out of it but the timeout: what
the transport took before it stopped carried no descriptor.
"""

import os
import select
import socket
import time

from volsep.drivers import errors

# A client that sends several descriptors has them all closed and refused.
_MAX_FDS = 4


def receive(fileno, timeout):
    """The one descriptor (close-on-exec) the peer of the connected socket
    ``fileno`` sends next, within ``timeout`` seconds."""
    sock = socket.socket(fileno=os.dup(fileno))
    try:
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise errors.Timeout(f'no descriptor within {timeout:g} s')
            try:
                data, fds, flags, _ = socket.recv_fds(
                    sock, 1, _MAX_FDS,
                    socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            break
    finally:
        sock.close()   # the duplicate: the connection stays open
    if len(fds) != 1 or flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        if not data:
            raise errors.InvalidArgument('the connection ended before the '
                                         'descriptor')
        raise errors.InvalidArgument(f'expected exactly one descriptor, got '
                                     f'{len(fds)}')
    return fds[0]
