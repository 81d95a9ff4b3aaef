"""A full filesystem is a StorageError naming the pool, never an unsafe
image, and leaves the volume as it was (a 160 MiB ext4 of its own)."""

import os
import subprocess
import uuid

import pytest

from volsep.drivers import errors

MiB = 1 << 20
TINY = os.environ['VOLSEP_TEST_TINY']


@pytest.fixture
def full_pool(tmp_path, rig):
    from volsep.frontend import manager as manager_module
    from volsep.privileged import files
    base = f'{TINY}/t-{uuid.uuid4().hex[:8]}'
    files.mkdir(base)
    state = tmp_path / 'state'
    state.mkdir()
    mgr = manager_module.Manager(str(state))
    mgr.add_pool('tiny', 'file', [('dir_path', f'{base}/tiny')])
    yield mgr, base
    rig.rmtree(base)


def _random_qcow2(tmp_path, data_mib):
    raw = tmp_path / 'data.raw'
    with open(raw, 'wb') as f:
        f.write(os.urandom(data_mib * MiB))
    path = tmp_path / 'data.qcow2'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(raw), str(path)], check=True)
    raw.unlink()
    return path


def _stream(mgr, address, path, fmt):
    size = os.path.getsize(path)
    mgr.import_begin(address, size, fmt)
    try:
        with open(path, 'rb') as f:
            offset = 0
            while chunk := f.read(4 * MiB):
                if fmt != 'raw':
                    mgr.import_inspect(address, chunk)
                mgr.import_write(address, offset, chunk)
                offset += len(chunk)
    except BaseException:
        mgr.import_end(address, False)
        raise
    return mgr.import_end(address, True)


def test_a_conversion_that_does_not_fit_is_a_storage_error(full_pool, rig,
                                                           tmp_path):
    """The upload fits, its private frozen copy or the converted image does
    not: StorageError naming the pool, not UnsafeImage."""
    mgr, base = full_pool
    mgr.create_volume('vm:root', 'tiny', MiB)
    volume_dir = f'{base}/tiny/vm/root'
    before = rig.tree(volume_dir)
    source = _random_qcow2(tmp_path, 60)
    with pytest.raises(errors.StorageError, match='pool tiny: no space') \
            as err:
        _stream(mgr, 'vm:root', source, 'qcow2')
    assert 'UnsafeImage' not in type(err.value).__name__
    assert rig.tree(volume_dir) == before


def test_a_stream_that_does_not_fit_is_a_storage_error(full_pool, rig,
                                                       tmp_path):
    mgr, base = full_pool
    mgr.create_volume('vm:root', 'tiny', MiB)
    volume_dir = f'{base}/tiny/vm/root'
    before = rig.tree(volume_dir)
    raw = tmp_path / 'big.raw'
    with open(raw, 'wb') as f:
        for _ in range(200):
            f.write(os.urandom(MiB))
    with pytest.raises(errors.StorageError, match='pool tiny: no space'):
        _stream(mgr, 'vm:root', raw, 'raw')
    assert rig.tree(volume_dir) == before


def test_imports_that_cannot_all_fit_fail_at_their_start(full_pool, rig):
    """Two 100 MiB streams into a 160 MiB filesystem: the second is
    refused before a byte is sent; once the first ends, it is accepted."""
    mgr, base = full_pool
    mgr.create_volume('a:root', 'tiny', MiB)
    mgr.create_volume('b:root', 'tiny', MiB)
    mgr.import_begin('a:root', 100 * MiB)
    b_dir = f'{base}/tiny/b/root'
    before = rig.tree(b_dir)
    with pytest.raises(errors.StorageError, match='reserved by imports'):
        mgr.import_begin('b:root', 100 * MiB)
    assert rig.tree(b_dir) == before
    mgr.import_end('a:root', False)
    mgr.import_begin('b:root', 100 * MiB)
    mgr.import_end('b:root', False)
