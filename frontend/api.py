"""volsepd's request handling: one coroutine per connection, storage work
in threads, every call checked against the policy first.

Import (params volume, size, format, force): after {"result": {"ready":
true}} the client sends exactly `size` raw bytes, then the line {"end":
true}. Fewer bytes (a disconnect), more bytes, anything but that line, or
no byte for `stream_timeout` seconds rolls the import back. An import
that would shrink the volume is refused unless "force": true. Export:
the reply {"result": {"size": N}} is followed by exactly N raw bytes; a
reader that consumes nothing for `stream_timeout` seconds is cut off and
the export snapshot removed.

Descriptor transfers (any format, "descriptor": true in the params, local
callers): instead of "ready", the reply carries "descriptor": true, and
the client sends one byte with its open file or pipe (SCM_RIGHTS; see
descriptor.py), which the root side copies in the kernel. An import also
takes "source_offset" (where the data starts in a regular file). After
the copy, an import sends {"id": ..., "status": "committing"}; then the
final reply. The connection ending during the copy rolls it back. When
the pool or the root side cannot take descriptors, or MAX_TRANSFERS are
running, the reply is the byte stream's, and the client streams instead.

Connections are admitted or refused at accept time, and idle or slow ones
are closed: see admission.py.
"""

import asyncio
import concurrent.futures
import logging
import os
import secrets

from volsep.drivers import errors
from volsep.drivers import validation
from volsep.frontend import admission
from volsep.frontend import descriptor
from volsep.frontend import peer as peer_module
from volsep.frontend import protocol

LOG = logging.getLogger('volsep.api')
AUDIT = logging.getLogger('volsep.audit')
CHUNK = 4 << 20
IN_FLIGHT = 2
# Descriptor transfers at once: each holds a thread of the long-jobs root
# daemon for its whole copy; half of them stay for conversions and pings.
MAX_TRANSFERS = 8


class _Stream(Exception):
    """A data stream that was short, long, malformed or refused midway;
    the connection ends after the error reply."""

    def __init__(self, message, error_class=None):
        super().__init__(str(message))
        self.error_class = error_class or 'InvalidArgument'


class _Stalled(_Stream):
    """The peer sent or consumed nothing for stream_timeout seconds."""

    def __init__(self, message):
        super().__init__(message, admission.TIMEOUT)


class _Closing(Exception):
    """The connection is closed with this error line (idle, slow)."""


def _param(params, key, required=True):
    if key not in params:
        if required:
            raise errors.InvalidArgument(f'missing parameter {key!r}')
        return None
    return params[key]


def _options(value):
    if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 and
            all(type(x) is str for x in p) for p in value):
        raise errors.InvalidArgument('options must be a list of [key, value]')
    return [tuple(p) for p in value]


class Api:
    def __init__(self, manager, policy, hub, workers=64, limits=None):
        self.manager = manager
        self.policy = policy
        self.hub = hub
        self.limits = limits or admission.Limits()
        self.admission = admission.Admission(self.limits, self._trusted)
        self.service_uid = os.getuid()
        # The policy's per-pool max_volume_size holds for every size the
        # manager sets, next to each pool's own option.
        manager.size_limits = lambda pool: policy.pool_limit(
            pool, 'max_volume_size')
        self.executor = concurrent.futures.ThreadPoolExecutor(workers)
        self._clone_tokens = {}
        self._transfers = 0
        m = manager
        # method -> (handler(params), event or None)
        self.simple = {
            'admin.pool.List': (lambda p: m.list_pools(), None),
            'admin.audit.Verify': (lambda p: m.audit_verify(), None),
            'admin.pool.ListDrivers': (lambda p: m.list_drivers(), None),
            'admin.pool.Info': (lambda p: m.pool_info(_param(p, 'pool')),
                                None),
            'admin.pool.Add': (lambda p: m.add_pool(
                _param(p, 'pool'), _param(p, 'driver'),
                _options(p.get('options', []))), 'pool-added'),
            'admin.pool.Remove': (lambda p: m.remove_pool(_param(p, 'pool')),
                                  'pool-removed'),
            'admin.pool.Set': (lambda p: m.set_pool(
                _param(p, 'pool'), _options(p.get('options', []))),
                'pool-changed'),
            'admin.pool.ListOrphans': (lambda p: m.pool_orphans(
                _param(p, 'pool')), None),
            'admin.pool.RemoveOrphans': (lambda p: m.remove_orphans(
                _param(p, 'pool'), p.get('paths')), 'pool-orphans-removed'),
            'admin.pool.AdoptOrphan': (lambda p: m.adopt_orphan(
                _param(p, 'pool'), _param(p, 'volume')), 'volume-adopted'),
            'admin.vm.volume.List': (lambda p: m.list_volumes(
                p.get('pool'), tuple(p.get('domains') or ())), None),
            'admin.vm.volume.Info': (lambda p: m.volume_info(
                _param(p, 'volume')), None),
            'admin.vm.volume.ListSnapshots': (lambda p: m.revisions(
                _param(p, 'volume')), None),
            'admin.vm.volume.Revert': (lambda p: m.revert(
                _param(p, 'volume'), p.get('revision')), 'volume-reverted'),
            'admin.vm.volume.Resize': (lambda p: m.resize(
                _param(p, 'volume'), _param(p, 'size'),
                bool(p.get('force', False))), 'volume-resized'),
            'admin.vm.volume.Create': (self._create, 'volume-created'),
            'admin.vm.volume.Remove': (lambda p: m.remove_volume(
                _param(p, 'volume')), 'volume-removed'),
            'admin.vm.volume.Clear': (lambda p: m.clear(_param(p, 'volume')),
                                      'volume-cleared'),
            'admin.vm.volume.Release': (lambda p: m.release_volume(
                _param(p, 'volume'), p.get('force') is True),
                'volume-released'),
            'admin.vm.volume.CloneFrom': (self._clone_from, None),
            'admin.vm.volume.CloneTo': (self._clone_to, 'volume-cloned'),
            'admin.vm.volume.Set.rw': (lambda p: m.set_volume(
                _param(p, 'volume'), 'rw', _param(p, 'value')),
                'volume-changed'),
            'admin.vm.volume.Set.revisions_to_keep': (lambda p: m.set_volume(
                _param(p, 'volume'), 'revisions_to_keep',
                _param(p, 'value')), 'volume-changed'),
            'admin.vm.Start': (lambda p: m.start_domain(_param(p, 'domain')),
                               'domain-started'),
            'admin.vm.Stop': (lambda p: m.stop_domain(_param(p, 'domain')),
                              'domain-stopped'),
            'admin.vm.DiskXML': (lambda p: {'xml': m.disk_xml(
                _param(p, 'domain'), p.get('full') is True)}, None),
            'admin.vm.volume.XML': (lambda p: {'xml': m.volume_xml(
                _param(p, 'volume'))}, None),
            'admin.pool.XML': (lambda p: {'xml': m.pool_xml(
                _param(p, 'pool'))}, None),
            'admin.vm.volume.ChainValidate': (lambda p: m.chain_validate(
                _param(p, 'volume')), None),
            'admin.vm.volume.ChainCorrect': (lambda p: m.chain_correct(
                _param(p, 'volume')), 'volume-chain-corrected'),
            'admin.vm.volume.ChainCommit': (lambda p: m.chain_commit(
                _param(p, 'volume'), _param(p, 'top'), _param(p, 'base')),
                'volume-chain-committed'),
            'admin.vm.volume.ChainPull': (lambda p: m.chain_pull(
                _param(p, 'volume'), _param(p, 'top'), _param(p, 'base')),
                'volume-chain-pulled'),
        }
        self.streaming = {'admin.vm.volume.Import': self._import,
                          'admin.vm.volume.Export': self._export,
                          'admin.Events': self._events}

    def _trusted(self, peer):
        """Root, the service's own user, and anyone the policy allows at
        least one method: they may use the reserved connection slots."""
        if peer.uid in (0, self.service_uid):
            return True
        for method in list(self.simple) + list(self.streaming):
            try:
                self.policy.check(peer, method)
                return True
            except Exception:  # noqa: BLE001 - denied, or a policy bug
                continue
        return False

    # -- handlers ----------------------------------------------------------

    def _create(self, p):
        return self.manager.create_volume(
            _param(p, 'volume'), _param(p, 'pool'), size=p.get('size', 0),
            kind=p.get('kind', 'persistent'), source=p.get('source'),
            revisions_to_keep=p.get('revisions_to_keep'),
            rw=p.get('rw', True), fmt=p.get('format'))

    def _clone_from(self, p):
        source = _param(p, 'volume')
        self.manager.volume_info(source)
        token = secrets.token_hex(16)
        self._clone_tokens[token] = source
        return {'token': token}

    def _clone_to(self, p):
        source = self._clone_tokens.pop(_param(p, 'token'), None)
        if source is None:
            raise errors.InvalidArgument('unknown or used clone token')
        return self.manager.clone(source, _param(p, 'volume'))

    def _clone_source(self, method, params):
        """The source address behind a CloneTo token, which the policy
        counts as named by the request."""
        token = params.get('token')
        if method != 'admin.vm.volume.CloneTo' or type(token) is not str:
            return ()
        source = self._clone_tokens.get(token)
        return (source,) if source else ()

    async def _run(self, func, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, func, *args)

    def _publish(self, event, params, result):
        subject = params.get('volume') or params.get('domain') or \
            params.get('pool') or ''
        self.hub.publish(event, subject)
        if event in ('domain-started', 'domain-stopped'):
            verb = event.split('-')[1]
            # On the event loop: from memory, never through the root side.
            for address, kind in self.manager.domain_volumes(subject):
                self.hub.publish(f'volume-{verb}', address)
                if verb == 'stopped' and kind == 'persistent':
                    self.hub.publish('volume-committed', address)

    async def _import(self, request_id, params, reader, writer, scope):
        address = _param(params, 'volume')
        size = validation.size(_param(params, 'size'))
        fmt = params.get('format', 'raw')
        force = params.get('force', False)
        if type(force) is not bool:
            raise errors.InvalidArgument('force must be true or false')
        # Off the event loop: it asks the root side for the volume's files.
        pool = (await self._run(self.manager.volume_info, address))['pool']
        allowed = self.policy.pool_limit(pool, 'import_formats')
        if allowed is not None and fmt not in allowed:
            raise errors.InvalidArgument(
                f'pool {pool} accepts imports in {", ".join(allowed)}, not '
                f'{fmt!r}')
        await self._run(self.manager.import_begin, address, size, fmt,
                        None, force)
        success = False
        try:
            if await self._transfer_slot(params, address):
                try:
                    await self._import_descriptor(request_id, address, size,
                                                  params, reader, writer)
                finally:
                    self._transfers -= 1
            else:
                await self._import_stream(request_id, address, size, reader,
                                          writer)
            success = True
        finally:
            info = await self._run(self.manager.import_end, address, success)
        self.hub.publish('volume-imported', address)
        return info

    async def _import_stream(self, request_id, address, size, reader,
                             writer):
        # Called inside import_begin/end: a peer gone (or stalled) before
        # it read this reply rolls the import back too.
        writer.write(protocol.encode({'id': request_id,
                                      'result': {'ready': True,
                                                 'size': size}}))
        await self._drain(writer)
        try:
            await self._receive(address, size, reader)
        except _Stream:
            raise
        except Exception as err:
            # Refused mid-stream (an unsafe image): the rest of the
            # stream is unread, so the connection cannot go on.
            raise _Stream(err, getattr(err, 'error_class', None)) \
                from err
        end = await self._read_up_to(reader, len(protocol.END_MARKER))
        if end != protocol.END_MARKER:
            raise _Stream(f'expected exactly {size} bytes and then '
                          f'{protocol.END_MARKER!r}')

    async def _transfer_slot(self, params, address):
        """Whether this transfer goes by descriptor (then it holds one of
        the MAX_TRANSFERS slots, which the caller gives back)."""
        if params.get('descriptor') is not True or \
                self._transfers >= MAX_TRANSFERS or \
                not await self._run(self.manager.takes_descriptors, address):
            return False
        self._transfers += 1
        return True

    def _stall_timeout(self):
        return admission.Limits.seconds(self.limits.stream_timeout)

    async def _take_descriptor(self, request_id, result, writer):
        """Reply ``result`` and receive the client's descriptor (see
        descriptor.py). Anything going wrong here loses the framing."""
        transport = writer.transport
        transport.pause_reading()
        try:
            writer.write(protocol.encode({'id': request_id,
                                          'result': result}))
            await self._drain(writer)
            sock = writer.get_extra_info('socket')
            return await self._run(descriptor.receive, sock.fileno(),
                                   self._stall_timeout() or 60)
        except Exception as err:
            raise _Stream(err, getattr(err, 'error_class', None)) from err
        finally:
            transport.resume_reading()

    async def _unless_abandoned(self, reader, work):
        """``work``'s result, unless the client hangs up or sends anything
        while it runs: then _Stream once it has ended (a root copy cannot
        be interrupted), so the caller rolls back."""
        work = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(reader.read(1))
        await asyncio.wait({work, watch},
                           return_when=asyncio.FIRST_COMPLETED)
        if watch.done():
            await asyncio.gather(work, return_exceptions=True)
            raise _Stream('the connection ended or sent data during the '
                          'transfer: nothing was changed')
        watch.cancel()
        return work.result()

    async def _import_descriptor(self, request_id, address, size, params,
                                 reader, writer):
        source_offset = validation.size(params.get('source_offset', 0))
        fd = await self._take_descriptor(
            request_id, {'ready': True, 'size': size, 'descriptor': True},
            writer)
        try:
            await self._unless_abandoned(reader, self._run(
                self.manager.import_descriptor, address, fd, source_offset,
                self._stall_timeout()))
        finally:
            os.close(fd)
        writer.write(protocol.encode({'id': request_id,
                                      'status': 'committing'}))

    async def _receive(self, address, size, reader):
        # Up to IN_FLIGHT chunks are written by the root side (whose file
        # daemon has as many threads) while the next is being received.
        # The image check sees chunks strictly in order, before their write.
        offset, pending, inspecting = 0, [], True
        try:
            while offset < size:
                want = min(CHUNK, size - offset)
                chunk = await self._read_up_to(reader, want)
                if len(chunk) < want:
                    raise _Stream(f'stream ended after '
                                  f'{offset + len(chunk)} of {size} bytes')
                if inspecting:
                    inspecting = await self._run(self.manager.import_inspect,
                                                 address, chunk)
                if len(pending) >= IN_FLIGHT:
                    await pending.pop(0)
                pending.append(asyncio.ensure_future(self._run(
                    self.manager.import_write, address, offset, chunk)))
                offset += len(chunk)
        finally:
            for write in pending:
                await write

    async def _read_up_to(self, reader, length):
        """Exactly ``length`` bytes, fewer at end of stream; _Stalled when
        no byte arrives for stream_timeout seconds (however slow the
        stream, progress keeps it going)."""
        timeout = admission.Limits.seconds(self.limits.stream_timeout)
        step = timeout and timeout / 4
        loop = asyncio.get_running_loop()
        parts, got, progress = [], 0, loop.time()
        while got < length:
            try:
                # The usual case: all of it at once.
                async with asyncio.timeout(step):
                    parts.append(await reader.readexactly(length - got))
                break
            except asyncio.IncompleteReadError as err:
                parts.append(err.partial)
                break
            except TimeoutError:
                pass
            # Slow: take what has arrived (a cancelled readexactly consumes
            # nothing), without waiting.
            try:
                async with asyncio.timeout(0):
                    data = await reader.read(length - got)
            except TimeoutError:
                if loop.time() - progress >= timeout:
                    raise _Stalled(f'no data for {timeout:g} s after {got} '
                                   f'bytes of a {length}-byte read: stream '
                                   f'aborted') from None
                continue
            if not data:
                break
            parts.append(data)
            got += len(data)
            progress = loop.time()
        return parts[0] if len(parts) == 1 else b''.join(parts)

    async def _drain(self, writer):
        """writer.drain(), but _Stalled when the peer consumes nothing of
        what is queued for stream_timeout seconds."""
        timeout = admission.Limits.seconds(self.limits.stream_timeout)
        if timeout is None:
            await writer.drain()
            return
        loop = asyncio.get_running_loop()
        transport = writer.transport
        queued, progress = transport.get_write_buffer_size(), loop.time()
        while True:
            try:
                async with asyncio.timeout(timeout / 4):
                    await writer.drain()
                return
            except TimeoutError:
                now = loop.time()
                if transport.get_write_buffer_size() < queued:
                    queued, progress = \
                        transport.get_write_buffer_size(), now
                elif now - progress >= timeout:
                    raise _Stalled(f'the peer consumed nothing for '
                                   f'{timeout:g} s: stream aborted') \
                        from None

    async def _export(self, request_id, params, reader, writer, scope):
        address = _param(params, 'volume')
        fmt = params.get('format', 'raw')
        if not await self._transfer_slot(params, address):
            return await self._export_snapshot(request_id, address, fmt,
                                               reader, writer, False)
        try:
            direct = await self._run(self.manager.direct_export_begin,
                                     address, fmt)
            if direct is None:
                return await self._export_snapshot(
                    request_id, address, fmt, reader, writer, True)
            size = direct['size']
            try:
                await self._export_descriptor(
                    request_id, size, reader, writer,
                    lambda fd: self.manager.export_direct(
                        address, size, fd, self._stall_timeout()))
            finally:
                await self._run(self.manager.direct_export_end,
                                direct['vid'])
            return {'size': size}
        finally:
            self._transfers -= 1

    async def _export_snapshot(self, request_id, address, fmt, reader,
                               writer, by_descriptor):
        export = await self._run(self.manager.export_begin, address, fmt)
        path, size = export['path'], export['size']
        try:
            if by_descriptor:
                await self._export_descriptor(
                    request_id, size, reader, writer,
                    lambda fd: self.manager.export_descriptor(
                        address, path, fd, self._stall_timeout()))
                return {'size': size}
            await self._export_stream(request_id, address, path, size,
                                      writer)
            return None
        finally:
            await self._run(self.manager.export_end, address, path)

    async def _export_descriptor(self, request_id, size, reader, writer,
                                 copy):
        """Announce ``size``, take the client's descriptor and run
        ``copy(fd)`` (a root-side copy into it)."""
        fd = await self._take_descriptor(
            request_id, {'size': size, 'descriptor': True}, writer)
        try:
            await self._unless_abandoned(reader, self._run(copy, fd))
        finally:
            os.close(fd)

    async def _export_stream(self, request_id, address, path, size, writer):
        pending = None
        try:
            writer.write(protocol.encode({'id': request_id,
                                          'result': {'size': size}}))
            def read(offset):
                return self._run(self.manager.export_read, address, path,
                                 offset, min(CHUNK, size - offset))
            # Read the next chunk from the root side while sending this one.
            offset, pending = 0, (read(0) if size else None)
            while pending is not None:
                data = await pending
                offset += len(data)
                pending = read(offset) if offset < size else None
                writer.write(data)
                await self._drain(writer)
        finally:
            if pending is not None:
                # Cut off (stalled or gone) while the next chunk was being
                # read: let that read end before the snapshot goes.
                await asyncio.gather(pending, return_exceptions=True)

    async def _events(self, request_id, params, reader, writer, scope):
        patterns = params.get('patterns', ['*'])
        if not isinstance(patterns, list) or not all(
                type(p) is str for p in patterns):
            raise errors.InvalidArgument('patterns must be a list of strings')
        # A domain-scoped caller hears only of its own domains.
        queue = self.hub.subscribe(
            patterns, scope.sees_event if scope is not None else None)
        try:
            writer.write(protocol.encode({'id': request_id,
                                          'result': {'subscribed': patterns}}))
            await writer.drain()
            while True:
                getter = asyncio.ensure_future(queue.get())
                closed = asyncio.ensure_future(reader.read(1))
                done, _ = await asyncio.wait(
                    {getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    getter.cancel()
                    return None
                closed.cancel()
                writer.write(protocol.encode(getter.result()))
                await writer.drain()
        finally:
            self.hub.unsubscribe(queue)

    # -- connection loop ---------------------------------------------------

    async def handle(self, reader, writer):
        try:
            caller = peer_module.of(writer.get_extra_info('socket'))
        except OSError:
            writer.transport.abort()
            return
        # Admission from the credentials alone, before reading anything.
        slot = self.admission.admit(caller)
        if not isinstance(slot, admission.Slot):
            writer.write(protocol.encode(protocol.error_reply(
                None, admission.TOO_MANY, slot)))
            self._close(writer)
            return
        try:
            while True:
                try:
                    line = await self._request_line(reader)
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    await self._send(writer, protocol.error_reply(
                        None, 'InvalidArgument', f'request longer than '
                        f'{self.limits.max_request_bytes} bytes'))
                    return
                except _Closing as err:
                    await self._send(writer, protocol.error_reply(
                        None, admission.TIMEOUT, err))
                    return
                reply = await self._one(caller, line, reader, writer)
                if reply is not None and reply.get('stream_broken'):
                    # The byte framing is lost: end the connection, without
                    # waiting for a peer that may read nothing any more.
                    writer.write(protocol.encode(reply))
                    return
                if reply is not None:
                    await self._send(writer, reply)
        except (ConnectionError, _Stalled):
            return
        finally:
            self.admission.release(slot)
            self._close(writer)

    async def _request_line(self, reader):
        """The next request line: its first byte within idle_timeout, the
        rest within request_timeout of it."""
        limits = self.limits
        idle = admission.Limits.seconds(limits.idle_timeout)
        try:
            async with asyncio.timeout(idle):
                first = await reader.readexactly(1)
        except TimeoutError:
            raise _Closing(f'idle for {idle:g} s: connection closed') \
                from None
        if first == b'\n':
            return first
        slow = admission.Limits.seconds(limits.request_timeout)
        try:
            async with asyncio.timeout(slow):
                return first + await reader.readuntil(b'\n')
        except TimeoutError:
            raise _Closing(f'request line not complete within {slow:g} s: '
                           f'connection closed') from None

    async def _send(self, writer, message):
        writer.write(protocol.encode(message))
        await self._drain(writer)

    @staticmethod
    def _close(writer):
        # close() would keep the descriptor until a peer that reads
        # nothing took what is queued: drop it instead.
        if writer.transport.get_write_buffer_size():
            writer.transport.abort()
        else:
            writer.close()

    async def _one(self, caller, line, reader, writer):
        request_id = None
        try:
            request_id, method, params = protocol.decode_request(line)
            try:
                # None, or the caller's domain scope (policy.py).
                scope = self.policy.check(caller, method, params,
                                          self._clone_source(method, params))
            except errors.PermissionDenied:
                AUDIT.warning('denied uid=%s gid=%s pid=%s method=%s',
                              caller.uid, caller.gid, caller.pid, method)
                raise
            if method in self.streaming:
                result = await self.streaming[method](request_id, params,
                                                      reader, writer, scope)
                if method == 'admin.vm.volume.Export' and result is None:
                    return None   # the stream was the reply
                return {'id': request_id, 'result': result}
            if method not in self.simple:
                raise errors.InvalidArgument(f'unknown method {method!r}')
            handler, event = self.simple[method]
            result = await self._run(handler, params)
            if scope is not None and method == 'admin.vm.volume.List':
                result = scope.volumes(result)
            if event:
                self._publish(event, params, result)
            return {'id': request_id, 'result': result}
        except _Stream as err:
            # translated() keeps a contract name, anything else is a
            # StorageError; a stall says Timeout, as a closed idle
            # connection does.
            error_class = admission.TIMEOUT if isinstance(err, _Stalled) \
                else errors.translated(err).error_class
            return dict(protocol.error_reply(request_id, error_class, err),
                        stream_broken=True)
        except Exception as err:  # noqa: BLE001 - every error gets a reply
            error_class = getattr(err, 'error_class', None)
            translated = errors.translated(err)
            if translated is not None:
                error_class = translated.error_class
            if error_class is None:
                if isinstance(err, (TypeError, ValueError, KeyError)):
                    error_class = 'InvalidArgument'
                else:
                    LOG.exception('unexpected error in %r', line[:200])
                    error_class = 'StorageError'
            return protocol.error_reply(request_id, error_class, err)
