"""A client of volsepd's socket, used by the CLI and by Python callers."""

import json
import os
import socket

from volsep.drivers import errors
from volsep.frontend import protocol

DEFAULT_SOCKET = '/var/lib/volsep/volsepd.sock'
CHUNK = 4 << 20


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

    def _reply(self):
        line = self.stream.readline()
        if not line:
            raise RemoteError('StorageError', 'volsepd closed the connection')
        reply = json.loads(line)
        if 'error' in reply:
            raise RemoteError(reply['error']['class'],
                              reply['error']['message'])
        return reply['result']

    def call(self, method, **params):
        self._send(method, params)
        return self._reply()

    def import_stream(self, address, source, size, fmt='raw',
                      progress=None, force=False, on_sent=None):
        """Send exactly ``size`` bytes read from the file object
        ``source``. A source with more than ``size`` bytes is refused, not
        cut: one byte past ``size`` is read, and if there is one the
        import is abandoned (volsepd rolls it back). ``force`` lets the
        import shrink the volume. ``progress(count)`` is called for each
        chunk sent, ``on_sent()`` once the whole stream is sent, when
        volsepd starts committing it (flush, rename, or a conversion)."""
        params = {'volume': address, 'size': size, 'format': fmt}
        if force:
            params['force'] = True
        self._send('admin.vm.volume.Import', params)
        self._reply()
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
                      on_size=None):
        """Write the volume's committed image to ``sink`` (anything with a
        write method); returns its size. ``on_size(size)`` is called once
        volsepd has announced the size, before the first byte,
        ``progress(count)`` for each chunk written."""
        self._send('admin.vm.volume.Export', {'volume': address,
                                              'format': fmt})
        size = self._reply()['size']
        if on_size:
            on_size(size)
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

    def events(self, patterns):
        self._send('admin.Events', {'patterns': list(patterns)})
        self._reply()
        while True:
            line = self.stream.readline()
            if not line:
                return
            yield json.loads(line)
