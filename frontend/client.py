"""A client of volsepd's socket, used by the CLI and by Python callers."""

import json
import os
import select
import socket
import stat

from volsep.drivers import errors
from volsep.frontend import protocol

DEFAULT_SOCKET = '/var/lib/volsep/volsepd.sock'
CHUNK = 4 << 20
# How often the progress of a descriptor transfer is looked at.
PROGRESS_SECONDS = 0.2


class RemoteError(errors.VolsepError):
    def __init__(self, error_class, message):
        super().__init__(message)
        self.error_class = error_class


def socket_path(explicit=None):
    return explicit or os.environ.get('VOLSEP_SOCKET') or DEFAULT_SOCKET


class Client:
    def __init__(self, path=None):
        self.path = socket_path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(self.path)
        except OSError as err:
            raise RemoteError(
                'StorageError', f'cannot reach volsepd at {self.path}: '
                f'{err.strerror}; start it (as root: systemctl start '
                f'volsepd, or volsepd --state-dir DIR) or name its socket '
                f'with --socket PATH or $VOLSEP_SOCKET') from None
        # Buffered: an unbuffered readline() costs one recv per byte.
        self.stream = self.sock.makefile('rb')
        self._next_id = 0

    def close(self):
        self.stream.close()
        self.sock.close()

    def _send(self, method, params):
        self._next_id += 1
        self.sock.sendall(protocol.encode({'id': self._next_id,
                                           'method': method,
                                           'params': params}))

    def _reply(self, on_status=None):
        while True:
            line = self.stream.readline()
            if not line:
                raise RemoteError('StorageError',
                                  'volsepd closed the connection')
            reply = json.loads(line)
            if 'status' not in reply:
                break
            if on_status:
                on_status(reply['status'])
        if 'error' in reply:
            raise RemoteError(reply['error']['class'],
                              reply['error']['message'])
        return reply['result']

    def call(self, method, **params):
        self._send(method, params)
        return self._reply()

    def import_stream(self, address, source, size, fmt='raw',
                      progress=None, force=False, on_sent=None,
                      hand_over=False):
        """Send exactly ``size`` bytes read from the file object
        ``source``. A source with more than ``size`` bytes is refused, not
        cut: one byte past ``size`` is read, and if there is one the
        import is abandoned (volsepd rolls it back). ``force`` lets the
        import shrink the volume. ``progress(count)`` is called for each
        chunk sent, ``on_sent()`` once the whole stream is sent, when
        volsepd starts committing it (flush, rename, or a conversion).
        With ``hand_over``, a source that is an unread regular file or
        pipe is offered to volsepd as a descriptor, whose root side then
        copies it in the kernel if it can (else the bytes are sent)."""
        params = {'volume': address, 'size': size, 'format': fmt}
        if force:
            params['force'] = True
        fd, offset = _handable(source, 'r') if hand_over else (None, None)
        if fd is not None:
            params.update(descriptor=True, source_offset=offset or 0)
        self._send('admin.vm.volume.Import', params)
        if self._reply().get('descriptor'):
            return self._hand_over(fd, offset, size, progress,
                                   on_sent and (lambda status: on_sent()))
        sent = 0
        try:
            while sent < size:
                data = source.read(min(CHUNK, size - sent))
                if not data:
                    break  # volsepd sees the short stream and rolls back
                self.sock.sendall(data)
                sent += len(data)
                if progress:
                    progress(len(data))
        except (BrokenPipeError, ConnectionResetError):
            # volsepd refused the stream midway (an unsafe image) and
            # closed; its reply says why.
            return self._reply()
        if sent < size:
            self.sock.shutdown(socket.SHUT_WR)
            return self._reply()
        if source.read(1):
            # Longer than announced: end the stream without its end line,
            # so volsepd rolls the import back, and say why.
            self.sock.shutdown(socket.SHUT_WR)
            try:
                self._reply()
            except RemoteError:
                pass
            raise RemoteError('InvalidArgument', f'the data is longer than '
                              f'{size} bytes; nothing was imported (give '
                              f'its exact size)')
        self.sock.sendall(protocol.encode(protocol.END_OF_STREAM))
        if on_sent:
            on_sent()
        return self._reply()

    def export_stream(self, address, sink, fmt='raw', progress=None,
                      on_size=None, hand_over=None):
        """Write the volume's committed image to ``sink`` (anything with a
        write method); returns its size. ``on_size(size)`` is called once
        volsepd has announced the size, before the first byte,
        ``progress(count)`` for each chunk written. ``hand_over``: the
        descriptor behind ``sink`` (an empty regular file or a pipe; the
        caller flushed ``sink``), offered to volsepd, whose root side
        then writes the image into it in the kernel if it can."""
        params = {'volume': address, 'format': fmt}
        fd, offset = _handable(hand_over, 'w') if hand_over is not None \
            else (None, None)
        if fd is not None:
            params['descriptor'] = True
        self._send('admin.vm.volume.Export', params)
        reply = self._reply()
        size = reply['size']
        if on_size:
            on_size(size)
        if reply.get('descriptor'):
            self._hand_over(fd, offset, size, progress)
            return size
        received = 0
        while received < size:
            data = self.stream.read(min(CHUNK, size - received))
            if not data:
                raise RemoteError('StorageError', f'export ended after '
                                  f'{received} of {size} bytes')
            sink.write(data)
            received += len(data)
            if progress:
                progress(len(data))
        return size

    def _hand_over(self, fd, offset, size, progress, on_status=None):
        """Send ``fd`` as volsepd asked, then wait for its final reply,
        reporting progress from the file offset the root side moves along
        (a pipe has none: its progress shows at the end)."""
        socket.send_fds(self.sock, [b'\0'], [fd])
        shown = 0
        while not select.select([self.sock], [], [], PROGRESS_SECONDS)[0]:
            if progress and offset is not None:
                done = min(os.lseek(fd, 0, os.SEEK_CUR) - offset, size)
                if done > shown:
                    progress(done - shown)
                    shown = done

        def finish_progress():
            nonlocal shown
            if progress and shown < size:
                progress(size - shown)
                shown = size

        def status(value):
            finish_progress()
            if on_status:
                on_status(value)
        result = self._reply(status)
        finish_progress()
        return result

    def events(self, patterns):
        self._send('admin.Events', {'patterns': list(patterns)})
        self._reply()
        while True:
            line = self.stream.readline()
            if not line:
                return
            yield json.loads(line)


def _handable(source, direction):
    """(descriptor, offset) of ``source`` (a file object or a descriptor)
    if it is a regular file or a pipe that can be handed over: offset is
    where a regular file is at (None for a pipe). (None, None) for
    anything else."""
    try:
        fd = source if isinstance(source, int) else source.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return None, None
    if stat.S_ISFIFO(mode):
        return fd, None
    if not stat.S_ISREG(mode):
        return None, None
    # A buffered reader may be ahead of what it returned: start where it
    # has got to, if it can say.
    offset = source.tell() if hasattr(source, 'tell') else \
        os.lseek(fd, 0, os.SEEK_CUR)
    return fd, offset
