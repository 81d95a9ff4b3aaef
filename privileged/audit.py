"""A hash-chained audit log written by the root side.

One JSON line per entrypoint call. Each line carries ``prev``, the SHA-256 of
the previous line's bytes, and ``seq``, its position; editing, removing or
reordering any line breaks the chain at the next line. The file is created
0600 by the daemon, so the unprivileged frontend can neither write nor read
it.
"""

import datetime
import functools
import hashlib
import json
import os
import threading
import time

from volsep.privileged import config
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


def _last_line(fd):
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - _TAIL_BYTES)
    tail = os.pread(fd, size - start, start).decode(errors='replace')
    lines = tail.rstrip('\n').split('\n')
    return lines[-1]


class AuditLog:
    def __init__(self, path):
        self._path = path
        self._lock = threading.Lock()
        self._fd = None
        self._prev = GENESIS
        self._seq = 0

    def _open(self):
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT |
                     os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        rfd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            last = _last_line(rfd)
        finally:
            os.close(rfd)
        if last:
            self._prev = line_hash(last)
            self._seq = json.loads(last)['seq']
        self._fd = fd

    def ensure_open(self):
        with self._lock:
            if self._fd is None:
                try:
                    self._open()
                except (OSError, ValueError, KeyError) as err:
                    raise errors.ConfigurationError(
                        f'audit log {self._path} is unusable: {err}')

    def append(self, record):
        with self._lock:
            self._seq += 1
            record['seq'] = self._seq
            record['prev'] = self._prev
            line = json.dumps(record, sort_keys=True, separators=(',', ':'),
                              default=repr)
            os.write(self._fd, (line + '\n').encode())
            self._prev = line_hash(line)


_log = None
_log_lock = threading.Lock()


def _the_log():
    global _log
    with _log_lock:
        if _log is None:
            _log = AuditLog(config.load().audit_log)
    _log.ensure_open()
    return _log


def audited(func):
    """Record every call of a root-side function, refusing to run it when
    the record cannot be written."""
    name = f'{func.__module__}.{func.__name__}'

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        log = _the_log()
        started = time.monotonic()
        outcome = 'ok'
        try:
            return func(*args, **kwargs)
        except Exception as err:
            outcome = f'{type(err).__name__}: {err}'
            raise
        finally:
            log.append({
                'time': datetime.datetime.now(datetime.timezone.utc)
                .isoformat(timespec='microseconds').replace('+00:00', 'Z'),
                'entrypoint': name,
                'args': _summarise(args),
                'kwargs': _summarise(kwargs),
                'caller': _caller(),
                'outcome': outcome,
                'duration_ms': round((time.monotonic() - started) * 1000, 3),
            })
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
