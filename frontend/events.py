"""Fan-out of volume, pool and domain events to subscribers."""

import asyncio
import fnmatch
import time


class Hub:
    def __init__(self):
        self._subscribers = []  # (patterns, asyncio.Queue, accept)
        self._loop = None

    def bind(self, loop):
        self._loop = loop

    def subscribe(self, patterns, accept=None):
        """``accept``: if given, a message reaches this subscriber only when
        accept(message) is true (a domain-scoped caller's filter)."""
        queue = asyncio.Queue(maxsize=10000)
        self._subscribers.append((tuple(patterns), queue, accept))
        return queue

    def unsubscribe(self, queue):
        self._subscribers = [s for s in self._subscribers if s[1] is not queue]

    def publish(self, event, subject, **fields):
        """Thread-safe: storage work runs off the event loop."""
        message = dict(fields, event=event, subject=subject,
                       time=time.time())
        self._loop.call_soon_threadsafe(self._deliver, message)

    def _deliver(self, message):
        for patterns, queue, accept in self._subscribers:
            if any(fnmatch.fnmatchcase(message['event'], p)
                   for p in patterns) and (accept is None or accept(message)):
                if not queue.full():  # a stalled subscriber loses events
                    queue.put_nowait(message)
