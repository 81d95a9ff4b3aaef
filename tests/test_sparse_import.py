"""Raw imports are written sparse: all-zero blocks of the stream become
holes in the volume, on each real filesystem, and the volume still reads
back exactly as the stream was (issue 11, item 16)."""

import hashlib
import os
import subprocess

import pytest

from tests import service_helpers as sh
from tests.test_service import EVERYONE
from volsep.privileged import files
from volsep.privileged import zeros

MiB = 1 << 20
SIZE = 256 * MiB
ENV = {'PATH': '/usr/bin:/bin'}
FILESYSTEMS = ('btrfs', 'ext4', 'xfs')


def _mostly_zeros():
    """SIZE bytes, about 3 MiB of them data: whole MiBs, a few bytes at odd
    offsets (zero blocks around data inside one chunk) and data in the
    last block, and data deep inside an otherwise empty block."""
    image = bytearray(SIZE)
    for offset in (0, 37 * MiB, 200 * MiB + 12345):
        image[offset:offset + MiB] = os.urandom(MiB)
    image[100 * MiB + 7:100 * MiB + 107] = os.urandom(100)
    # Past the first bytes of its block, which alone read as zeros.
    image[150 * MiB + 60000:150 * MiB + 60100] = os.urandom(100)
    image[SIZE - 10:] = b'last bytes'
    return bytes(image)


def _cli(service, *args, input_data=None):
    proc = subprocess.run(
        [f'{sh.VENV}/volsep', '--socket', service.socket, *args],
        input=input_data, capture_output=True, env=ENV, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr.decode(errors='replace')


@pytest.fixture
def service_on(rig):
    """Factory: a volsepd whose state and default pool are on ``fs``."""
    started = []

    def start(fs):
        started.append(sh.Service(sh.fresh_state_dir(fs),
                                  policy=EVERYONE).start())
        started[-1].json('volume', 'create', 'vm:root', '--pool', 'default',
                         '--size', str(SIZE), '--revisions-to-keep', '0')
        return started[-1]
    yield start
    for service in started:
        service.stop()
        rig.rmtree(service.state_dir)


def _check_sparse_and_identical(service, rig, address, data):
    path = service.json('volume', 'info', address)['path']
    st = rig.lstat(path)
    assert st['size'] == SIZE
    # ~3 MiB of data; allow for filesystem rounding and metadata blocks.
    assert st['blocks'] * 512 < 16 * MiB, st['blocks'] * 512
    assert rig.sha256(path) == hashlib.sha256(data).hexdigest()
    rc, out, err = _cli(service, 'volume', 'export', address, '-')
    assert rc == 0, err
    assert out == data


@pytest.mark.parametrize('fs', FILESYSTEMS)
def test_import_of_a_mostly_empty_file_takes_the_space_of_its_data(
        service_on, rig, tmp_path, fs):
    data = _mostly_zeros()
    service = service_on(fs)
    image = tmp_path / 'sparse-source.raw'
    image.write_bytes(data)
    rc, _, err = _cli(service, 'volume', 'import', 'vm:root', str(image))
    assert rc == 0, err
    _check_sparse_and_identical(service, rig, 'vm:root', data)


def test_import_from_a_pipe_with_size_is_sparse_too(service_on, rig):
    data = _mostly_zeros()
    service = service_on('xfs')
    rc, _, err = _cli(service, 'volume', 'import', 'vm:root', '-', '--size',
                      str(SIZE), input_data=data)
    assert rc == 0, err
    _check_sparse_and_identical(service, rig, 'vm:root', data)


def test_longer_stream_of_zeros_changes_nothing(service_on, rig):
    data = _mostly_zeros()
    service = service_on('xfs')
    rc, _, err = _cli(service, 'volume', 'import', 'vm:root', '-', '--size',
                      str(SIZE), input_data=data)
    assert rc == 0, err
    path = service.json('volume', 'info', 'vm:root')['path']
    before = rig.tree(os.path.dirname(path))
    rc, _, err = _cli(service, 'volume', 'import', 'vm:root', '-', '--size',
                      str(SIZE), input_data=bytes(SIZE + 1))
    assert rc == 1 and 'longer' in err, err
    assert rig.tree(os.path.dirname(path)) == before
    _check_sparse_and_identical(service, rig, 'vm:root', data)


def test_zeros_written_over_data_punch_it_out(any_root, rig):
    """A chunk written twice (a frontend may do that) reads back as its
    last write: zeros over data are a hole, not the old data."""
    _, directory = any_root
    path = f'{directory}/v.img'
    files.create(path, 4 * MiB)
    files.write_at(path, 0, os.urandom(4 * MiB))
    assert rig.lstat(path)['blocks'] * 512 >= 4 * MiB
    half = bytes(MiB) + os.urandom(MiB)
    files.write_at(path, 0, half + bytes(2 * MiB))
    assert rig.read(path, 0, 4 * MiB) == half + bytes(2 * MiB)
    assert rig.lstat(path)['blocks'] * 512 < 2 * MiB


def test_zero_runs_merge_blocks_and_cover_everything():
    block = zeros.BLOCK
    data = bytes(2 * block) + b'x' + bytes(3 * block) + b'tail'
    runs = list(zeros.runs(data))
    assert runs == [(0, 2 * block, True), (2 * block, 3 * block, False),
                    (3 * block, 5 * block, True),
                    (5 * block, len(data), False)]
    assert list(zeros.runs(b'')) == []
    assert list(zeros.runs(bytes(10))) == [(0, 10, True)]
