"""`volume import` and `volume export` through the real CLI and volsepd:
nothing but the image on stdout, no import of a size nobody knows, no
silently cut or shrinking import, and no export that damages its target
(issue 11, items 1-3)."""

import os
import signal
import subprocess
import time

import pytest

from tests import service_helpers as sh
from tests.test_service import service  # noqa: F401

MiB = 1 << 20
ENV = {'PATH': '/usr/bin:/bin'}


def _run(service, *args, stdin=None, input_data=None, pass_fds=()):
    """The CLI as the test user; stdout as bytes, exactly."""
    proc = subprocess.run(
        [f'{sh.VENV}/volsep', '--socket', service.socket, *args],
        stdin=stdin, input=input_data, capture_output=True, env=ENV,
        pass_fds=pass_fds, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr.decode(errors='replace')


def _volume(service, address, size, data=None, tmp_path=None, *extra):
    service.json('volume', 'create', address, '--pool', 'default', '--size',
                 str(size), *extra)
    if data is not None:
        image = tmp_path / f'seed-{address.replace(":", "-")}.raw'
        image.write_bytes(data)
        rc, _, err = _run(service, 'volume', 'import', address, str(image))
        assert rc == 0, err
        image.unlink()
    return service.json('volume', 'info', address)


def _snapshot(service, rig, address):
    """What an unchanged volume keeps: its files (exactly), size and
    revisions."""
    info = service.json('volume', 'info', address)
    directory = os.path.dirname(info['path'])
    return (rig.tree(directory), info['size'],
            service.json('volume', 'revisions', address))


def _content(service, rig, address):
    """Files (by name, type, size, content), size and revisions: what an
    import rolled back at its end still keeps identical (it touched the
    directory)."""
    tree, size, revisions = _snapshot(service, rig, address)
    return ({name: (entry[0], entry[1], entry[4])
             for name, entry in tree.items()}, size, revisions)


# -- 1. export to stdout --------------------------------------------------

@pytest.mark.parametrize('fmt', ['raw', 'qcow2'])
def test_export_to_stdout_is_byte_identical_to_export_to_file(
        service, tmp_path, fmt):
    data = os.urandom(3 * MiB) + bytes(MiB)
    _volume(service, 'vm:root', 4 * MiB, data, tmp_path)
    reference = tmp_path / f'ref.{fmt}'
    rc, _, err = _run(service, 'volume', 'export', 'vm:root', str(reference),
                      '--format', fmt)
    assert rc == 0, err
    expected = reference.read_bytes()
    if fmt == 'raw':
        assert expected == data
    else:
        assert expected[:4] == b'QFI\xfb'
    for formatter in ((), ('-f', 'json'), ('-f', 'table'), ('-f', 'value')):
        rc, out, err = _run(service, 'volume', 'export', 'vm:root', '-',
                            '--format', fmt, *formatter)
        assert rc == 0, (formatter, err)
        assert len(out) == len(expected), formatter
        assert out == expected, formatter


@pytest.mark.parametrize('fmt', ['raw', 'qcow2'])
def test_export_into_a_pipe_closed_early_ends_quietly(service, rig,
                                                      tmp_path, fmt):
    """Found by a newcomer: `volume export VOL - | head -c 100` printed
    InvalidArgument and exited 1 for raw (the root side found the reader
    gone) while qcow2 ended by SIGPIPE. Both now end by SIGPIPE, as cat
    does, with nothing on stderr, and the volume is unchanged."""
    _volume(service, f'pipe{fmt}:root', 8 << 20, os.urandom(8 << 20),
            tmp_path)
    before = _content(service, rig, f'pipe{fmt}:root')
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [f'{sh.VENV}/volsep', '--socket', service.socket, 'volume',
         'export', f'pipe{fmt}:root', '-', '--format', fmt],
        stdout=write_end, stderr=subprocess.PIPE, env=ENV)
    os.close(write_end)
    assert len(os.read(read_end, 100)) == 100
    os.close(read_end)   # as head does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGPIPE, err
    assert err == b''
    assert _content(service, rig, f'pipe{fmt}:root') == before


def test_failed_export_to_stdout_writes_nothing_there(service):
    rc, out, err = _run(service, 'volume', 'export', 'vm:nope', '-', '-f',
                        'json')
    assert rc == 1 and out == b''
    assert err.strip() == 'volsep: VolumeNotFound: no volume vm:nope'


# -- 2. import: the size must be known, exact, and not shrink -------------

def test_import_of_unknown_size_is_a_usage_error_and_changes_nothing(
        service, rig, tmp_path):
    data = os.urandom(2 * MiB)
    _volume(service, 'vm:root', 2 * MiB, data, tmp_path, '--revisions-to-keep',
            '1')
    before = _snapshot(service, rig, 'vm:root')
    read_end, write_end = os.pipe()
    os.write(write_end, b'z' * 4096)  # as <(...) gives: a pipe with data
    os.close(write_end)
    try:
        attempts = [
            ('/dev/zero', {}),
            (f'/dev/fd/{read_end}', {'pass_fds': (read_end,)}),
            ('-', {'input_data': b'y' * 4096}),  # stdin is a pipe
        ]
        for path, kwargs in attempts:
            rc, out, err = _run(service, 'volume', 'import', 'vm:root', path,
                                **kwargs)
            assert rc == 2, (path, rc, err)
            assert err.startswith('volsep: InvalidArgument:') and \
                '--size' in err, (path, err)
            assert _snapshot(service, rig, 'vm:root') == before, path
    finally:
        os.close(read_end)


def test_import_from_stdin_that_is_a_regular_file_needs_no_size(
        service, tmp_path):
    _volume(service, 'vm:root', 2 * MiB)
    data = os.urandom(2 * MiB)
    image = tmp_path / 'in.raw'
    image.write_bytes(data)
    with open(image, 'rb') as stdin:
        rc, out, err = _run(service, 'volume', 'import', 'vm:root', '-',
                            stdin=stdin)
    assert rc == 0, err
    rc, out, err = _run(service, 'volume', 'export', 'vm:root', '-')
    assert rc == 0 and out == data


def test_stream_longer_than_size_is_refused_not_cut(service, rig, tmp_path):
    data = os.urandom(MiB)
    _volume(service, 'vm:root', MiB, data, tmp_path, '--revisions-to-keep',
            '1')
    before = _content(service, rig, 'vm:root')
    longer = os.urandom(MiB + 1)
    rc, out, err = _run(service, 'volume', 'import', 'vm:root', '-',
                        '--size', '1M', input_data=longer)
    assert rc == 1, err
    assert err.startswith('volsep: InvalidArgument:') and 'longer' in err
    assert _content(service, rig, 'vm:root') == before
    image = tmp_path / 'two.raw'
    image.write_bytes(os.urandom(2 * MiB))
    rc, out, err = _run(service, 'volume', 'import', 'vm:root', str(image),
                        '--size', '1M')
    assert rc == 1 and 'longer' in err, err
    assert _content(service, rig, 'vm:root') == before
    rc, out, err = _run(service, 'volume', 'export', 'vm:root', '-')
    assert out == data
    # The exact size is accepted.
    rc, out, err = _run(service, 'volume', 'import', 'vm:root', '-',
                        '--size', '1M', input_data=longer[:MiB])
    assert rc == 0, err
    rc, out, err = _run(service, 'volume', 'export', 'vm:root', '-')
    assert out == longer[:MiB]


def test_shrinking_import_needs_force(service, rig, tmp_path):
    data = os.urandom(4 * MiB)
    _volume(service, 'vm:root', 4 * MiB, data, tmp_path)
    before = _snapshot(service, rig, 'vm:root')
    small = os.urandom(2 * MiB)
    image = tmp_path / 'small.raw'
    image.write_bytes(small)
    for source, kwargs in ((str(image), {}), ('-', {'input_data': small})):
        rc, out, err = _run(service, 'volume', 'import', 'vm:root', source,
                            '--size', '2M', **kwargs)
        assert rc == 1, (source, err)
        assert err.startswith('volsep: InvalidArgument:') and \
            '--force' in err, err
        assert _snapshot(service, rig, 'vm:root') == before
    rc, out, err = _run(service, 'volume', 'import', 'vm:root', str(image),
                        '--force', '-f', 'json')
    assert rc == 0, err
    assert service.json('volume', 'info', 'vm:root')['size'] == 2 * MiB
    rc, out, err = _run(service, 'volume', 'export', 'vm:root', '-')
    assert out == small
    # Same size or larger needs no --force.
    bigger = os.urandom(3 * MiB)
    rc, out, err = _run(service, 'volume', 'import', 'vm:root', '-',
                        '--size', '3M', input_data=bigger)
    assert rc == 0, err


def test_shrinking_qcow2_import_needs_force(service, rig, tmp_path):
    _volume(service, 'vm:root', 4 * MiB, os.urandom(4 * MiB), tmp_path)
    image = tmp_path / 'small.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(image),
                    '1M'], check=True, env=ENV)
    before = _content(service, rig, 'vm:root')
    rc, out, err = _run(service, 'volume', 'import', 'vm:root', str(image),
                        '--format', 'qcow2')
    assert rc == 1, err
    assert err.startswith('volsep: InvalidArgument:') and '--force' in err
    assert _content(service, rig, 'vm:root') == before
    rc, out, err = _run(service, 'volume', 'import', 'vm:root', str(image),
                        '--format', 'qcow2', '--force')
    assert rc == 0, err
    assert service.json('volume', 'info', 'vm:root')['size'] == MiB


def test_empty_size_is_refused(service, rig, tmp_path):
    rc, out, err = _run(service, 'volume', 'create', 'vm:empty', '--pool',
                        'default', '--size', '')
    assert rc == 2, err
    assert service.json('volume', 'list') == []
    data = os.urandom(MiB)
    _volume(service, 'vm:root', MiB, data, tmp_path)
    before = _snapshot(service, rig, 'vm:root')
    image = tmp_path / 'in.raw'
    image.write_bytes(os.urandom(MiB))
    for source, kwargs in ((str(image), {}), ('-', {'input_data': b'x'})):
        rc, out, err = _run(service, 'volume', 'import', 'vm:root', source,
                            '--size', '', **kwargs)
        assert rc == 2, (source, err)
        assert _snapshot(service, rig, 'vm:root') == before


# -- 3. export to a file: atomic, never destroying the target -------------

def _precious(tmp_path, mode=0o640):
    target = tmp_path / 'precious.raw'
    target.write_bytes(os.urandom(4 * MiB))
    target.chmod(mode)
    return target, target.read_bytes()


def _left(tmp_path):
    return sorted(os.listdir(tmp_path))


def test_failed_export_leaves_the_target_and_no_temporary_file(
        service, rig, tmp_path):
    pool_dir = f'{service.state_dir}/pools/chains'
    service.json('pool', 'add', 'chains', 'qcow2', '-o',
                 f'dir_path={pool_dir}')
    service.json('volume', 'create', 'db:root', '--pool', 'chains', '--size',
                 '1M', '--format', 'raw')
    service.json('volume', 'create', 'vm:tmp', '--pool', 'default', '--size',
                 '1M', '--kind', 'volatile')
    work = tmp_path / 'out'
    work.mkdir()
    target, original = _precious(work)
    # A chain whose committed top is gone cannot be exported.
    rig.run(['rm', service.json('volume', 'info', 'db:root')['path']])
    for volume, error_class in (('nosuch:vol', 'VolumeNotFound'),
                                ('db:root', 'StorageError'),
                                ('vm:tmp', 'InvalidArgument')):
        for force in ((), ('--force',)):
            rc, out, err = _run(service, 'volume', 'export', volume,
                                str(target), *force)
            assert rc == 1, (volume, force, err)
            if force:
                assert err.startswith(f'volsep: {error_class}:'), err
            assert target.read_bytes() == original, (volume, force)
            assert _left(work) == ['precious.raw'], (volume, force)


def test_existing_target_needs_force_then_is_replaced_atomically(
        service, tmp_path):
    data = os.urandom(2 * MiB) + bytes(2 * MiB)
    _volume(service, 'vm:root', 4 * MiB, data, tmp_path)
    work = tmp_path / 'out'
    work.mkdir()
    target, original = _precious(work)
    inode = target.stat().st_ino
    rc, out, err = _run(service, 'volume', 'export', 'vm:root', str(target))
    assert rc == 1 and '--force' in err, err
    assert target.read_bytes() == original
    assert target.stat().st_ino == inode
    assert _left(work) == ['precious.raw']
    rc, out, err = _run(service, 'volume', 'export', 'vm:root', str(target),
                        '--force', '-f', 'json')
    assert rc == 0, err
    assert target.read_bytes() == data
    st = target.stat()
    assert st.st_ino != inode          # a new file renamed into place
    assert st.st_mode & 0o777 == 0o640  # the replaced file's mode kept
    assert _left(work) == ['precious.raw']
    # A new file needs no --force.
    fresh = work / 'fresh.raw'
    rc, out, err = _run(service, 'volume', 'export', 'vm:root', str(fresh))
    assert rc == 0, err
    assert fresh.read_bytes() == data
    assert _left(work) == ['fresh.raw', 'precious.raw']


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_interrupted_export_leaves_the_old_target(service, tmp_path, sig):
    service.json('volume', 'create', 'vm:big', '--pool', 'default', '--size',
                 '2G')
    # One data block every 32 KiB: the root side copies an export into
    # the file in the kernel, and what takes it seconds is the number of
    # data segments, not bytes (an empty volume is exported at once).
    seed = tmp_path / 'speckled.raw'
    with open(seed, 'wb') as f:
        for offset in range(0, 2 << 30, 32 << 10):
            os.pwrite(f.fileno(), b'x', offset)
        f.truncate(2 << 30)
    rc, _, err = _run(service, 'volume', 'import', 'vm:big', str(seed))
    assert rc == 0, err
    seed.unlink()
    work = tmp_path / 'out'
    work.mkdir()
    target, original = _precious(work)
    proc = subprocess.Popen(
        [f'{sh.VENV}/volsep', '--socket', service.socket, 'volume', 'export',
         'vm:big', str(target), '--force'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    # The temporary file appears as the export begins; the copy takes
    # seconds more: signal it well inside.
    deadline = time.monotonic() + 60
    while len(_left(work)) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    assert proc.poll() is None, 'the export ended before the signal'
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else 1), err
    if sig == signal.SIGTERM:
        assert 'volsep: StorageError: export interrupted by SIGTERM' in \
            err.decode()
    assert target.read_bytes() == original
    assert _left(work) == ['precious.raw']
