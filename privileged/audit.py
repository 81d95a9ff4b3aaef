"""A hash-chained audit log written by the root side.

One JSON line per entrypoint call. Each line carries ``prev``, the SHA-256 of
the previous line's bytes, and ``seq``, its position; editing, removing or
reordering any line breaks the chain at the next line. The file is created
0600 by the daemon, so the unprivileged frontend can neither write nor read
it.
"""

import datetime
import fcntl
import functools
import hashlib
import json
import os
import threading
import time

from volsep.privileged import config
from volsep.privileged import contexts
from volsep.privileged import errors

GENESIS = '0' * 64
_TAIL_BYTES = 1 << 16


def line_hash(line):
    return hashlib.sha256(line.encode()).hexdigest()


def _summarise(value):
    # Data payloads are logged by length: the log records decisions, not data.
    if isinstance(value, (bytes, bytearray)):
        return {'bytes': len(value)}
    if isinstance(value, (list, tuple)):
        return [_summarise(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _summarise(v) for k, v in value.items()}
    return value


_CALLER_TTL = 1.0
_caller_cache = {'at': float('-inf'), 'value': None}


def _caller():
    # The caller is the daemon's parent (the frontend). Its uid changes at
    # most once (the drop from root, before the first real call), so reading
    # /proc once a second keeps the record right at a fraction of the cost.
    now = time.monotonic()
    if now - _caller_cache['at'] < _CALLER_TTL:
        return _caller_cache['value']
    ppid = os.getppid()
    uid = None
    try:
        with open(f'/proc/{ppid}/status', 'rb') as f:
            for line in f:
                if line.startswith(b'Uid:'):
                    uid = int(line.split()[1])
                    break
    except OSError:
        pass
    _caller_cache.update(at=now, value={'pid': ppid, 'uid': uid})
    return _caller_cache['value']


# Longest line a record may take: the next writer finds the chain's end in
# the file's last _TAIL_BYTES, so a longer line (a huge argument) would
# make the log unreadable to every other daemon, for good.
_MAX_LINE = 16 << 10
_KEEP = 1024


def _dumps(value):
    return json.dumps(value, sort_keys=True, separators=(',', ':'),
                      default=repr)


def _line(record):
    line = _dumps(record)
    if len(line) <= _MAX_LINE:
        return line
    for key in ('args', 'kwargs', 'outcome'):
        text = _dumps(record.get(key))
        if len(text) > _KEEP:
            record[key] = {'truncated_chars': len(text),
                           'sha256': hashlib.sha256(text.encode()).hexdigest(),
                           'head': text[:_KEEP]}
    return _dumps(record)


def _last_line(fd):
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - _TAIL_BYTES)
    tail = os.pread(fd, size - start, start).decode(errors='replace')
    lines = tail.rstrip('\n').split('\n')
    return lines[-1]


def _torn_tail(fd, size):
    """(offset, bytes) of what follows the last newline: the part of a
    record whose append was cut short (every whole record ends with one);
    None if the file ends with a whole record."""
    if size == 0 or os.pread(fd, 1, size - 1) == b'\n':
        return None
    start = max(0, size - _TAIL_BYTES)
    tail = os.pread(fd, size - start, start)
    cut = tail.rfind(b'\n') + 1
    if cut == 0 and start > 0:
        return None   # no record boundary in reach: leave it to verify
    return start + cut, tail[cut:]


class AuditLog:
    """Appends records to one file shared by both root daemons: the
    sequence number and previous hash come from the file itself, read and
    extended under an exclusive flock, so the two daemons' records form one
    chain. A daemon remembers where its own last record ended, so it reads
    the tail only when the other daemon has written since."""

    def __init__(self, path):
        self._path = path
        self._lock = threading.Lock()
        self._fd = None
        self._rfd = None
        self._known = None   # (file size, seq, hash) after our last record

    def _open(self):
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT |
                     os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._rfd = os.open(self._path,
                            os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._fd = fd

    def ensure_open(self):
        with self._lock:
            if self._fd is None:
                try:
                    self._open()
                except OSError as err:
                    raise errors.ConfigurationError(
                        f'audit log {self._path} is unusable: {err}')

    def _chain_end(self, size):
        if self._known is not None and self._known[0] == size:
            return self._known[1], self._known[2]
        last = _last_line(self._rfd)
        if not last:
            return 0, GENESIS
        try:
            return json.loads(last)['seq'], line_hash(last)
        except (ValueError, KeyError, TypeError) as err:
            raise errors.ConfigurationError(
                f'audit log {self._path}: its last line is unusable: {err}')

    def append(self, record):
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._close_torn_record()
                self._write(record)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _close_torn_record(self):
        """A daemon killed (or a host that lost power) in the middle of an
        append leaves a partial last line, which would end the chain for
        every later call. Cut it off and say so in the chain itself, with
        what was cut, so nothing disappears unrecorded."""
        torn = _torn_tail(self._rfd, os.fstat(self._fd).st_size)
        if torn is None:
            return
        offset, fragment = torn
        os.ftruncate(self._fd, offset)
        text = fragment.decode(errors='replace')
        self._write({
            'time': datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec='microseconds').replace('+00:00', 'Z'),
            'entrypoint': 'volsep.privileged.audit.torn_record_removed',
            'outcome': 'ok', 'offset': offset, 'bytes': len(fragment),
            'sha256': hashlib.sha256(fragment).hexdigest(),
            'head': text[:_KEEP]})

    def _write(self, record):
        """Append one record; the caller holds the flock."""
        seq, prev = self._chain_end(os.fstat(self._fd).st_size)
        record['seq'] = seq + 1
        record['prev'] = prev
        line = _line(record)
        data = (line + '\n').encode()
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
        except OSError:
            written = -1
        if written != len(data):
            # A torn line would end the chain for every daemon:
            # take back what was written and fail the call.
            os.ftruncate(self._fd, size)
            raise errors.ConfigurationError(
                f'audit log {self._path}: could not append a '
                f'record ({written} of {len(data)} bytes)')
        self._known = (os.fstat(self._fd).st_size, seq + 1,
                       line_hash(line))


_log = None
_log_lock = threading.Lock()


def _the_log():
    global _log
    with _log_lock:
        if _log is None:
            _log = AuditLog(config.load().audit_log)
    _log.ensure_open()
    return _log


def _record(name, args, kwargs, outcome, started, **extra):
    return dict({
        'time': datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec='microseconds').replace('+00:00', 'Z'),
        'entrypoint': name,
        'args': _summarise(args),
        'kwargs': _summarise(kwargs),
        'caller': _caller(),
        'outcome': outcome,
        'duration_ms': round((time.monotonic() - started) * 1000, 3),
    }, **extra)


class _Streams:
    """Chunk calls of one stream (write_at/read_at on one path) summed up:
    the first chunk is recorded as it happens, the rest as one summary
    record when the next call about that path comes (the import's rename,
    the export's unlink), every STREAM_BYTES, or when the daemon exits."""

    STREAM_BYTES = 1 << 30

    def __init__(self):
        self._lock = threading.Lock()
        self._open = {}   # (entrypoint, path) -> summary

    def chunk(self, log, name, path, offset, length):
        """True if this chunk belongs to a stream already recorded."""
        with self._lock:
            summary = self._open.get((name, path))
            if summary is None:
                self._open[(name, path)] = {'chunks': 0, 'bytes': 0,
                                            'first_offset': offset,
                                            'end_offset': offset + length}
                return False
            summary['chunks'] += 1
            summary['bytes'] += length
            summary['end_offset'] = max(summary['end_offset'],
                                        offset + length)
            full = summary['bytes'] >= self.STREAM_BYTES
        if full:
            self.flush(log, path)
        return True

    def flush(self, log, path=None):
        with self._lock:
            keys = [k for k in self._open if path is None or k[1] == path]
            summaries = [(k, self._open.pop(k)) for k in keys]
        for (name, stream_path), summary in summaries:
            if summary['chunks']:
                log.append(_record(name, (stream_path,), {}, 'ok',
                                   time.monotonic(), stream=summary))


_streams = _Streams()


def flush_streams():
    """Write the summaries still open (the daemon is about to exit)."""
    if _log is not None:
        _streams.flush(_log)


def audited(func):
    """Record every call of a root-side function, refusing to run it when
    the record cannot be written."""
    name = f'{func.__module__}.{func.__name__}'

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        log = _the_log()
        if args and isinstance(args[0], str):
            _streams.flush(log, args[0])   # a stream on it has ended
        started = time.monotonic()
        outcome = 'ok'
        try:
            return func(*args, **kwargs)
        except Exception as err:
            outcome = f'{type(err).__name__}: {err}'
            raise
        finally:
            log.append(_record(name, args, kwargs, outcome, started))
    return wrapper


def audited_stream(func):
    """Like audited, for the chunk calls of a stream (path, offset, data or
    length): the first chunk and any failing one are recorded as they
    happen, the others summed up (_Streams)."""
    name = f'{func.__module__}.{func.__name__}'

    @functools.wraps(func)
    def wrapper(path, offset, payload):
        log = _the_log()
        started = time.monotonic()
        try:
            result = func(path, offset, payload)
        except Exception as err:
            _streams.flush(log, path)
            log.append(_record(name, (path, offset, payload), {},
                               f'{type(err).__name__}: {err}', started))
            raise
        length = payload if isinstance(payload, int) else len(payload)
        if not _streams.chunk(log, name, path, offset, length):
            log.append(_record(name, (path, offset, payload), {}, 'ok',
                               started, stream='start'))
        return result
    return wrapper


def verify_lines(lines):
    """Check a whole log; return (True, count, '') or (False, count, why)."""
    prev = GENESIS
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            return False, number - 1, f'line {number} is not JSON'
        if not isinstance(record, dict):
            return False, number - 1, f'line {number} is not a record'
        if record.get('seq') != number:
            return (False, number - 1,
                    f'line {number} has seq {record.get("seq")!r}: a line '
                    f'was removed or moved')
        if record.get('prev') != prev:
            return (False, number - 1,
                    f'line {number} does not follow line {number - 1}: '
                    f'a line was edited, removed or moved')
        prev = line_hash(line)
    return True, len(lines), ''


def read_lines(path):
    with open(path, encoding='utf-8', errors='replace') as f:
        return f.read().splitlines()


@contexts.file_ops.entrypoint
@audited
def verify():
    """Check this root side's own log (which only root may read):
    {ok, lines, verified, problem}."""
    lines = read_lines(config.load().audit_log)
    ok, count, problem = verify_lines(lines)
    return {'ok': ok, 'lines': len(lines), 'verified': count,
            'problem': problem or None}
