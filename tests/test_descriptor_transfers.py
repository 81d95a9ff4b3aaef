"""Imports and exports by descriptor (issue 12, goals 4 and 6): the CLI hands
its file or pipe to volsepd (SCM_RIGHTS), whose root side copies it in the
kernel, and treats what it is handed as hostile: only regular files and
pipes, only with the access they were opened with, never blocking a worker
forever, and nothing changed on disk by any bad input."""

import hashlib
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from tests import service_helpers as sh
from tests import test_clone
from tests.test_service import EVERYONE

MiB = 1 << 20
SIZE = 16 * MiB
STALL = 2
ENV = {'PATH': '/usr/bin:/bin'}


@pytest.fixture
def service(rig):
    state_dir = sh.fresh_state_dir()
    svc = sh.Service(state_dir, policy=EVERYONE,
                     extra_args=['--stream-timeout', str(STALL)]).start()
    svc.json('volume', 'create', 'vm:root', '--pool', 'default', '--size',
             str(SIZE), '--revisions-to-keep', '0')
    yield svc
    if svc.pid is not None:
        svc.stop()
    rig.rmtree(state_dir)


def _cli(service, *args, input_data=None):
    proc = subprocess.run(
        [f'{sh.VENV}/volsep', '--socket', service.socket, *args],
        input=input_data, capture_output=True, env=ENV, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr.decode(errors='replace')


def _audit_lines(rig, service):
    log = rig.read(f'{service.state_dir}/audit.log').decode()
    return [json.loads(line) for line in log.splitlines()]


def _calls(rig, service, since):
    return [r['entrypoint'].rsplit('.', 1)[-1]
            for r in _audit_lines(rig, service)[since:]]


def _volume_dir(service):
    return os.path.dirname(service.json('volume', 'info', 'vm:root')['path'])


def _snapshot(rig, service):
    return rig.tree(_volume_dir(service)), service.json(
        'volume', 'info', 'vm:root')


class _Raw:
    """volsepd's protocol by hand, to pass any descriptor at all."""

    def __init__(self, service):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(service.socket)
        self.lines = self.sock.makefile('rb')

    def request(self, method, **params):
        self.sock.sendall(json.dumps({'id': 1, 'method': method,
                                      'params': params}).encode() + b'\n')
        return self.reply()

    def reply(self):
        while True:
            message = json.loads(self.lines.readline())
            if 'status' not in message:
                return message

    def hand_over(self, fd, method='admin.vm.volume.Import', **params):
        ready = self.request(method, descriptor=True, **params)
        assert ready['result']['descriptor'] is True, ready
        socket.send_fds(self.sock, [b'\0'], [fd])
        return self.reply()

    def close(self):
        self.lines.close()
        self.sock.close()


def _import_fd(service, fd, size=SIZE):
    raw = _Raw(service)
    try:
        return raw.hand_over(fd, volume='vm:root', size=size, force=True)
    finally:
        raw.close()


def _export_fd(service, fd):
    raw = _Raw(service)
    try:
        return raw.hand_over(fd, 'admin.vm.volume.Export', volume='vm:root')
    finally:
        raw.close()


def _seeded(service, tmp_path):
    data = os.urandom(SIZE)
    source = tmp_path / 'seed.raw'
    source.write_bytes(data)
    rc, _, err = _cli(service, 'volume', 'import', 'vm:root', str(source))
    assert rc == 0, err
    return data


# -- the descriptor path is taken, and right ------------------------------

def test_file_import_is_one_root_call_with_no_chunks(service, rig,
                                                     tmp_path):
    data = os.urandom(SIZE)
    source = tmp_path / 'image.raw'
    source.write_bytes(data)
    since = len(_audit_lines(rig, service))
    rc, out, err = _cli(service, 'volume', 'import', 'vm:root', str(source),
                        '-f', 'json')
    assert rc == 0, err
    assert json.loads(out)['size'] == SIZE
    calls = _calls(rig, service, since)
    assert calls.count('import_from_descriptor') == 1, calls
    assert 'write_at' not in calls
    path = service.json('volume', 'info', 'vm:root')['path']
    assert rig.sha256(path) == hashlib.sha256(data).hexdigest()


def test_a_file_on_the_pools_filesystem_is_imported_as_shared_extents(
        service, rig):
    """The default pool (file-reflink) and the caller's file share an XFS:
    the import shares the file's extents (one FICLONE), keeps its hole,
    and is still the volume's own: a later write to the file changes
    nothing of it."""
    directory = f'{service.state_dir}-caller'
    rig.mkdir(directory)
    source = f'{directory}/image.raw'
    head, tail = os.urandom(4 * MiB), os.urandom(MiB)
    rig.write(source, head, 0o644)
    rig.pwrite(source, SIZE - MiB, tail)   # a hole of 11 MiB between
    try:
        rc, _, err = _cli(service, 'volume', 'import', 'vm:root', source)
        assert rc == 0, err
        path = service.json('volume', 'info', 'vm:root')['path']
        expected = head + bytes(SIZE - 5 * MiB) + tail
        assert rig.sha256(path) == hashlib.sha256(expected).hexdigest()
        rows = test_clone.extents(rig, path)
        assert rows and all('shared' in row for row in rows), rows
        assert rig.lstat(path)['blocks'] * 512 <= 6 * MiB
        rig.pwrite(source, 0, bytes(MiB))
        assert rig.sha256(path) == hashlib.sha256(expected).hexdigest()
    finally:
        rig.rmtree(directory)


def test_qcow2_import_and_export_go_by_descriptor(service, rig, tmp_path):
    """A qcow2 file is handed over too: copied by the root side, then
    inspected and converted where it lies (goal 6)."""
    data = os.urandom(SIZE)
    (tmp_path / 'image.raw').write_bytes(data)
    source = tmp_path / 'image.qcow2'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(tmp_path / 'image.raw'), str(source)], check=True)
    since = len(_audit_lines(rig, service))
    rc, out, err = _cli(service, 'volume', 'import', 'vm:root', str(source),
                        '--format', 'qcow2', '-f', 'json')
    assert rc == 0, err
    assert json.loads(out)['size'] == SIZE
    target = tmp_path / 'out.qcow2'
    rc, _, err = _cli(service, 'volume', 'export', 'vm:root', str(target),
                      '--format', 'qcow2')
    assert rc == 0, err
    calls = _calls(rig, service, since)
    assert calls.count('import_from_descriptor') == 1, calls
    assert calls.count('export_to_descriptor') == 1, calls
    assert 'write_at' not in calls and 'read_at' not in calls
    path = service.json('volume', 'info', 'vm:root')['path']
    assert rig.sha256(path) == hashlib.sha256(data).hexdigest()
    compare = subprocess.run(['qemu-img', 'compare', '-f', 'qcow2', '-F',
                              'raw', str(target), str(tmp_path / 'image.raw')],
                             capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def test_pipe_import_and_export_go_by_descriptor(service, rig):
    data = os.urandom(SIZE)
    since = len(_audit_lines(rig, service))
    rc, _, err = _cli(service, 'volume', 'import', 'vm:root', '-', '--size',
                      str(SIZE), input_data=data)
    assert rc == 0, err
    rc, out, err = _cli(service, 'volume', 'export', 'vm:root', '-')
    assert rc == 0, err
    assert out == data
    calls = _calls(rig, service, since)
    assert calls.count('import_from_descriptor') == 1, calls
    assert calls.count('export_to_descriptor') == 1, calls
    assert 'write_at' not in calls and 'read_at' not in calls


def test_file_export_goes_by_descriptor_and_stays_sparse(service, rig,
                                                         tmp_path):
    data = bytearray(SIZE)
    data[5 * MiB:6 * MiB] = os.urandom(MiB)
    source = tmp_path / 'mostly-holes.raw'
    source.write_bytes(bytes(data))
    rc, _, err = _cli(service, 'volume', 'import', 'vm:root', str(source))
    assert rc == 0, err
    since = len(_audit_lines(rig, service))
    target = tmp_path / 'out.raw'
    rc, _, err = _cli(service, 'volume', 'export', 'vm:root', str(target))
    assert rc == 0, err
    assert target.read_bytes() == bytes(data)
    assert target.stat().st_blocks * 512 < 4 * MiB
    calls = _calls(rig, service, since)
    assert calls.count('export_to_descriptor') == 1, calls
    # Read straight from the committed image: no private snapshot first.
    assert 'clone' not in calls and 'unlink' not in calls, calls


def test_a_plain_file_pool_exports_without_copying_first(service, rig,
                                                         tmp_path):
    service.json('pool', 'add', 'plain', 'file', '-o',
                 f'dir_path={service.state_dir}/pools/plain')
    service.json('volume', 'create', 'vm:data', '--pool', 'plain',
                 '--size', str(SIZE), '--revisions-to-keep', '1')
    data = os.urandom(SIZE)
    source = tmp_path / 'data.raw'
    source.write_bytes(data)
    rc, _, err = _cli(service, 'volume', 'import', 'vm:data', str(source))
    assert rc == 0, err
    since = len(_audit_lines(rig, service))
    target = tmp_path / 'out.raw'
    rc, out, err = _cli(service, 'volume', 'export', 'vm:data', str(target),
                        '-f', 'json')
    assert rc == 0, err
    assert json.loads(out)['size'] == SIZE
    assert target.read_bytes() == data
    calls = _calls(rig, service, since)
    # Listings, then the copy itself: nothing written.
    assert set(calls) == {'list_dir', 'export_to_descriptor'}, calls
    assert calls.count('export_to_descriptor') == 1, calls


def test_a_volume_the_vm_writes_in_place_is_exported_from_a_snapshot(
        service, rig, tmp_path):
    service.json('volume', 'set', 'vm:root', 'revisions_to_keep', '-1')
    data = _seeded(service, tmp_path)
    since = len(_audit_lines(rig, service))
    rc, out, err = _cli(service, 'volume', 'export', 'vm:root', '-')
    assert rc == 0, err
    assert out == data
    calls = _calls(rig, service, since)
    assert 'clone' in calls and calls.count('export_to_descriptor') == 1, \
        calls


def test_a_commit_during_an_export_leaves_the_export_as_it_began(rig,
                                                                 tmp_path):
    """The export reads the committed image itself, under no lock: a start
    and a commit go on meanwhile, and the reader still gets exactly the
    data from before them."""
    state_dir = sh.fresh_state_dir()
    svc = sh.Service(state_dir, policy=EVERYONE,
                     extra_args=['--stream-timeout', '60']).start()
    raw = None
    try:
        svc.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', str(SIZE), '--revisions-to-keep', '0')
        old = _seeded(svc, tmp_path)
        r, w = os.pipe()
        raw = _Raw(svc)
        ready = raw.request('admin.vm.volume.Export', volume='vm:root',
                            descriptor=True)
        assert ready['result'] == {'size': SIZE, 'descriptor': True}, ready
        socket.send_fds(raw.sock, [b'\0'], [w])
        os.close(w)
        received = bytearray(os.read(r, MiB))
        assert received

        # While it runs, nothing may let the VM write that image.
        code, _, err = _cli(svc, 'volume', 'set', 'vm:root',
                            'revisions_to_keep', '-1')
        assert code != 0 and 'being exported' in err, err
        new = os.urandom(MiB)
        started = svc.json('domain', 'start', 'vm')
        rig.pwrite(started[0]['path'], 0, new)
        svc.json('domain', 'stop', 'vm')

        while chunk := os.read(r, MiB):
            received += chunk
        os.close(r)
        assert raw.reply()['result'] == {'size': SIZE}
        assert bytes(received) == old
        path = svc.json('volume', 'info', 'vm:root')['path']
        assert rig.read(path, 0, MiB) == new
        assert rig.read(path, MiB) == old[MiB:]
        # Once it is over, the switch is allowed.
        svc.json('volume', 'set', 'vm:root', 'revisions_to_keep', '-1')
    finally:
        if raw is not None:
            raw.close()
        svc.stop()
        rig.rmtree(state_dir)


# -- hostile descriptors: a clear error, nothing changed --------------------

def _refused(service, rig, fd, expect, size=SIZE, export=False):
    before = _snapshot(rig, service)
    reply = _export_fd(service, fd) if export else \
        _import_fd(service, fd, size)
    assert 'error' in reply, reply
    assert expect in reply['error']['message'], reply
    assert _snapshot(rig, service) == before
    return reply


def test_fifo_that_never_writes_times_out_and_frees_the_worker(
        service, rig, tmp_path):
    data = _seeded(service, tmp_path)
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY)   # held open, never written
    try:
        started = time.monotonic()
        reply = _refused(service, rig, reader, 'no data from the pipe')
        assert reply['error']['class'] == 'Timeout'
        assert STALL <= time.monotonic() - started < STALL + 20
    finally:
        os.close(reader)
        os.close(writer)
    # The worker is free again, and the volume as it was.
    path = service.json('volume', 'info', 'vm:root')['path']
    assert rig.sha256(path) == hashlib.sha256(data).hexdigest()
    rc, _, err = _cli(service, 'volume', 'import', 'vm:root', '-', '--size',
                      str(SIZE), input_data=bytes(SIZE))
    assert rc == 0, err


def test_a_pipe_that_is_never_closed_after_its_data_times_out(service, rig,
                                                              tmp_path):
    _seeded(service, tmp_path)
    r, w = os.pipe()
    feeder = threading.Thread(target=os.write, args=(w, b'x' * 4096))
    feeder.start()
    try:
        reply = _refused(service, rig, r, 'not closed', size=4096)
        assert reply['error']['class'] == 'Timeout'
    finally:
        feeder.join()
        os.close(r)
        os.close(w)


def test_a_socket_is_refused(service, rig):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        _refused(service, rig, ours.fileno(), 'a socket')


@pytest.mark.parametrize('flags', [os.O_RDONLY | os.O_DIRECTORY, os.O_PATH],
                         ids=['O_RDONLY', 'O_PATH'])
def test_a_directory_is_refused(service, rig, tmp_path, flags):
    fd = os.open(tmp_path, flags)
    try:
        _refused(service, rig, fd, 'O_PATH' if flags == os.O_PATH else
                 'a directory')
    finally:
        os.close(fd)


def test_a_write_only_descriptor_cannot_be_imported(service, rig, tmp_path):
    source = tmp_path / 'data.raw'
    source.write_bytes(os.urandom(SIZE))
    fd = os.open(source, os.O_WRONLY)
    try:
        _refused(service, rig, fd, 'not open for reading')
    finally:
        os.close(fd)


def test_a_read_only_descriptor_cannot_be_exported_into(service, rig,
                                                        tmp_path):
    _seeded(service, tmp_path)
    target = tmp_path / 'target.raw'
    target.write_bytes(b'precious')
    fd = os.open(target, os.O_RDONLY)
    try:
        _refused(service, rig, fd, 'not open for writing', export=True)
    finally:
        os.close(fd)
    assert target.read_bytes() == b'precious'


def test_a_file_the_caller_cannot_read_stays_unread(service, rig, tmp_path):
    directory = f'{sh.fresh_state_dir()}-secret'
    rig.mkdir(directory)
    secret = f'{directory}/secret.raw'
    rig.write(secret, b's' * SIZE, 0o600)   # root's, 0600
    try:
        with pytest.raises(PermissionError):
            os.open(secret, os.O_RDONLY)
        with pytest.raises(PermissionError):
            os.open(secret, os.O_WRONLY)
        # What the caller can get is a descriptor without access.
        fd = os.open(secret, os.O_PATH)
        try:
            _refused(service, rig, fd, 'O_PATH')
        finally:
            os.close(fd)
    finally:
        rig.rmtree(directory)


def test_a_source_truncated_during_the_copy_changes_nothing(service, rig,
                                                            tmp_path):
    data = _seeded(service, tmp_path)
    # One data block every 16 KiB: the copy takes a while (segments).
    source = tmp_path / 'speckled.raw'
    with open(source, 'wb') as f:
        for offset in range(0, SIZE, 16 << 10):
            os.pwrite(f.fileno(), b'x', offset)
    fd = os.open(source, os.O_RDONLY)
    raw = _Raw(service)
    before = _snapshot(rig, service)
    try:
        ready = raw.request('admin.vm.volume.Import', volume='vm:root',
                            size=SIZE, descriptor=True)
        assert ready['result']['descriptor'], ready
        socket.send_fds(raw.sock, [b'\0'], [fd])
        # Swapped for another file by name, then truncated: the root side
        # has the descriptor, not the name, and sees the short source.
        os.rename(source, tmp_path / 'moved.raw')
        source.write_bytes(b'decoy')
        os.truncate(tmp_path / 'moved.raw', SIZE // 2)
        reply = raw.reply()
    finally:
        raw.close()
        os.close(fd)
    assert 'error' in reply, reply
    assert reply['error']['class'] == 'InvalidArgument'
    assert 'source' in reply['error']['message'], reply
    assert _snapshot(rig, service) == before
    path = service.json('volume', 'info', 'vm:root')['path']
    assert rig.sha256(path) == hashlib.sha256(data).hexdigest()


def test_short_and_long_files_change_nothing(service, rig, tmp_path):
    _seeded(service, tmp_path)
    for length, expect in ((SIZE - 1, 'ended after'), (SIZE + 1, 'longer')):
        source = tmp_path / f'{length}.raw'
        source.write_bytes(b'y' * length)
        fd = os.open(source, os.O_RDONLY)
        try:
            _refused(service, rig, fd, expect)
        finally:
            os.close(fd)


def test_several_descriptors_at_once_are_refused(service, rig, tmp_path):
    _seeded(service, tmp_path)
    source = tmp_path / 'a.raw'
    source.write_bytes(os.urandom(SIZE))
    raw = _Raw(service)
    before = _snapshot(rig, service)
    fds = [os.open(source, os.O_RDONLY) for _ in range(2)]
    try:
        raw.request('admin.vm.volume.Import', volume='vm:root', size=SIZE,
                    descriptor=True)
        socket.send_fds(raw.sock, [b'\0'], fds)
        reply = raw.reply()
    finally:
        raw.close()
        for fd in fds:
            os.close(fd)
    assert 'exactly one descriptor' in reply['error']['message'], reply
    assert _snapshot(rig, service) == before


# -- review: a handed-over image is first inspected by the root side --------

def _sparse_vmdk_with_a_bad_footer(tmp_path, size):
    """A streamOptimized VMDK whose header says its grain directory is in
    the footer: the inspectors must read to the end of the file, which is
    ``size`` bytes of holes (a few KiB on disk), and then refuse it (the
    footer does not match the header)."""
    import struct
    (tmp_path / 'small.raw').write_bytes(b'\1' * MiB)
    small = tmp_path / 'small.vmdk'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'vmdk', '-o',
                    'subformat=streamOptimized', str(tmp_path / 'small.raw'),
                    str(small)], check=True)
    image = bytearray(small.read_bytes())
    struct.pack_into('<Q', image, 56, 0xFFFFFFFFFFFFFFFF)   # GD_AT_END
    path = tmp_path / 'hostile.vmdk'
    with open(path, 'wb') as f:
        f.write(image)
        f.truncate(size)
    return path


def test_a_sparse_hostile_image_costs_the_root_side_no_read_of_its_holes(
        service, rig, tmp_path):
    """Found in review (b115920): streamed, this image is refused by the
    frontend's own check at the end of the stream, and no root call reads
    it. Handed over, the root side copies it in a moment (holes stay holes)
    and its quick-calls daemon then reads every hole of it in qemu.info's
    inspection (about 7 s per GiB here, with no time limit, under the
    volume's lock), once more in convert's if it passes: a few concurrent
    imports of sparse files occupy that daemon's 16 threads for as long as
    the caller likes (the pool's free space bounds only the sum of their
    sizes), and the watchdog stops volsepd when its ping goes unanswered
    for 10 s."""
    size = 1536 * MiB
    path = _sparse_vmdk_with_a_bad_footer(tmp_path, size)
    since = len(_audit_lines(rig, service))
    with open(path, 'rb') as f:
        reply = _Raw(service)
        try:
            ready = reply.request('admin.vm.volume.Import', descriptor=True,
                                  volume='vm:root', size=size,
                                  format='vmdk', force=True)
            assert ready['result']['descriptor'] is True, ready
            socket.send_fds(reply.sock, [b'\0'], [f.fileno()])
            answer = reply.reply()
        finally:
            reply.close()
    assert answer.get('error', {}).get('class') == 'UnsafeImage' or \
        'UnsafeImage' in json.dumps(answer), answer
    records = _audit_lines(rig, service)[since:]
    spent = {r['entrypoint'].rsplit('.', 1)[-1]: r['duration_ms']
             for r in records
             if not r['entrypoint'].endswith('import_from_descriptor')}
    assert sum(spent.values()) < 2000, spent


def test_the_root_side_refuses_an_export_it_was_not_announced(rig,
                                                              tmp_path):
    """export_to_descriptor checks what it is given itself: the size the
    reader was told must be the image's, and its flags booleans; a refusal
    leaves the caller's file as it was."""
    from tests import storage_helpers as h
    from volsep.drivers import directory
    from volsep.privileged import errors as root_errors
    from volsep.privileged import transfers
    mgr, base = h.make_manager(tmp_path, h.POOL_KINDS[0], rig)
    try:
        mgr.create_volume('vm:root', 'p', SIZE)
        image = mgr.volume_info('vm:root')['path']
        target = tmp_path / 'target.raw'
        target.write_bytes(b'precious')
        fd = os.open(target, os.O_WRONLY)
        try:
            for kwargs, message in (
                    ({'size': SIZE + 1}, f'not {SIZE + 1}'),
                    ({'size': -1}, 'outside'),
                    ({'size': True}, 'integer'),
                    ({'hold': 'no'}, 'boolean')):
                with pytest.raises(root_errors.InvalidArgument,
                                   match=message):
                    transfers.export_to_descriptor(
                        image, directory._hand_over(fd), **kwargs)
        finally:
            os.close(fd)
        assert target.read_bytes() == b'precious'
    finally:
        rig.rmtree(base)
