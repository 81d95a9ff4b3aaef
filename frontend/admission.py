"""Who gets a connection, and for how long a connection may sit still.

The API socket is open to every local user (mode 0666); the policy decides
what each may do. So that no one can take the API down without any right,
a connection is admitted or refused at accept time, from the peer's
credentials alone (SO_PEERCRED), before a single byte is read:

- at most ``max_connections`` connections in all, and at most
  ``max_connections_per_uid`` for any one uid;
- ``reserved_connections`` of the total are kept for *trusted* callers:
  root, the service's own user, and every caller the policy allows at
  least one method. Callers the policy allows nothing (outsiders) share
  the rest, so a flood by one or many outsider uids cannot starve them.

A refused connection gets one error line and is closed. Each admitted
connection buffers at most about twice ``max_request_bytes`` of input (the
reader limit), so memory is bounded by the connection limits.

Timeouts (seconds, 0 disables one): ``idle_timeout`` while a connection
waits for a request line; ``request_timeout`` from the first byte of a
line to its newline (a slow or stuck client); ``stream_timeout`` for an
import or export (or any reply) that makes no progress, i.e. no byte
received or consumed for that long. An events subscription is long-lived
by design and is not timed out while subscribed, but it still holds its
caller's connection slot.
"""

import dataclasses
import logging
import resource
import time

LOG = logging.getLogger('volsep.admission')

TOO_MANY = 'TooManyConnections'
TIMEOUT = 'Timeout'

# Descriptors volsepd needs besides its connections (privsep channels,
# state files, the listening socket, thread pools' files).
DESCRIPTOR_MARGIN = 256
_CACHE_SECONDS = 30
_CACHE_ENTRIES = 4096
_LOG_EVERY = 60


@dataclasses.dataclass(frozen=True)
class Limits:
    max_connections: int = 512
    max_connections_per_uid: int = 64
    reserved_connections: int = 64
    max_request_bytes: int = 64 << 10
    idle_timeout: float = 300.0
    request_timeout: float = 30.0
    stream_timeout: float = 60.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value < 0:
                raise ValueError(f'{field.name} must not be negative')
        if self.max_connections < 1 or self.max_connections_per_uid < 1:
            raise ValueError('connection limits must be at least 1')
        if self.reserved_connections >= self.max_connections:
            raise ValueError('reserved_connections must be below '
                             'max_connections')
        if self.max_request_bytes < 1024:
            raise ValueError('max_request_bytes must be at least 1024')

    @staticmethod
    def seconds(value):
        """A timeout for asyncio.timeout(): None when disabled (0)."""
        return value or None


def fit_descriptor_limit(limits):
    """Raise RLIMIT_NOFILE's soft limit so every admitted connection gets
    a descriptor; if the hard limit is too low, lower max_connections
    (and the reserve with it) instead. Returns the limits to use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + DESCRIPTOR_MARGIN
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else \
            min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        soft = new_soft
    if soft != resource.RLIM_INFINITY and soft < wanted:
        fitted = max(1, soft - DESCRIPTOR_MARGIN)
        reserve = min(limits.reserved_connections, fitted // 2)
        LOG.warning('only %d descriptors: max_connections lowered from %d '
                    'to %d (reserved %d)', soft, limits.max_connections,
                    fitted, reserve)
        limits = dataclasses.replace(limits, max_connections=fitted,
                                     reserved_connections=reserve)
    return limits


@dataclasses.dataclass
class Slot:
    uid: int
    trusted: bool
    released: bool = False


class Admission:
    """Connection accounting. ``trusted(peer)`` says whether a caller may
    use the reserve; its answer is cached briefly per credentials."""

    def __init__(self, limits, trusted):
        self.limits = limits
        self._trusted = trusted
        self._per_uid = {}
        self.total = 0
        self.outsiders = 0
        self._cache = {}
        self._refused = {}  # uid -> [count since last log, last log time]

    def is_trusted(self, peer):
        key = (peer.uid, peer.gid, peer.groups)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[1] < _CACHE_SECONDS:
            return cached[0]
        verdict = bool(self._trusted(peer))
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = (verdict, now)
        return verdict

    def admit(self, peer):
        """A Slot, or a string saying why the connection is refused."""
        limits = self.limits
        trusted = self.is_trusted(peer)
        held = self._per_uid.get(peer.uid, 0)
        if held >= limits.max_connections_per_uid:
            reason = (f'uid {peer.uid} already has {held} connections (at '
                      f'most {limits.max_connections_per_uid})')
        elif self.total >= limits.max_connections:
            reason = f'volsepd has {self.total} connections (at most ' \
                     f'{limits.max_connections})'
        elif not trusted and self.outsiders >= (
                limits.max_connections - limits.reserved_connections):
            reason = (f'{self.outsiders} connections from callers without '
                      f'any policy right (at most '
                      f'{limits.max_connections - limits.reserved_connections}'
                      f')')
        else:
            self._per_uid[peer.uid] = held + 1
            self.total += 1
            if not trusted:
                self.outsiders += 1
            return Slot(peer.uid, trusted)
        self._log_refusal(peer.uid, reason)
        return reason

    def release(self, slot):
        if slot.released:
            return
        slot.released = True
        held = self._per_uid[slot.uid] - 1
        if held:
            self._per_uid[slot.uid] = held
        else:
            del self._per_uid[slot.uid]
        self.total -= 1
        if not slot.trusted:
            self.outsiders -= 1

    def held_by(self, uid):
        return self._per_uid.get(uid, 0)

    def _log_refusal(self, uid, reason):
        # One line per uid and minute, so a flood cannot flood the log.
        now = time.monotonic()
        entry = self._refused.setdefault(uid, [0, None])
        entry[0] += 1
        if entry[1] is None or now - entry[1] >= _LOG_EVERY:
            LOG.warning('refused %d connection(s) from uid %d: %s',
                        entry[0], uid, reason)
            entry[0], entry[1] = 0, now
        if len(self._refused) > _CACHE_ENTRIES:
            self._refused.clear()
