"""Clones on real XFS, btrfs and ext4: shared extents, or honest copies."""

import pytest

from volsep.privileged import errors
from volsep.privileged import files

MiB = 1 << 20


def _spread_image(rig, path, size=256 * MiB, pieces=64):
    """A sparse image with data in many separate extents."""
    files.create(path, size)
    step = size // pieces
    for i in range(pieces):
        rig.pwrite(path, i * step, bytes([i % 251 + 1]) * 8192)


def extents(rig, path):
    rc, out, err = rig.run(['filefrag', '-v', path])
    assert rc == 0, err
    rows = [line for line in out.decode().splitlines()
            if line.strip()[:1].isdigit() and ':' in line]
    return rows


@pytest.mark.parametrize('fs', ['xfs', 'btrfs'])
def test_reflink_clone_shares_every_extent(fs, pool_dir_on, rig):
    d = pool_dir_on(fs)
    _spread_image(rig, f'{d}/src')
    assert files.clone(f'{d}/src', f'{d}/dst', 'always') == 'reflink'
    rows = extents(rig, f'{d}/dst')
    assert len(rows) >= 32
    assert all('shared' in row for row in rows), rows
    assert rig.sha256(f'{d}/dst') == rig.sha256(f'{d}/src')


@pytest.mark.parametrize('fs', ['xfs', 'btrfs'])
def test_never_makes_an_independent_sparse_copy(fs, pool_dir_on, rig):
    d = pool_dir_on(fs)
    _spread_image(rig, f'{d}/src')
    assert files.clone(f'{d}/src', f'{d}/dst', 'never') == 'copy'
    rows = extents(rig, f'{d}/dst')
    assert rows and not any('shared' in row for row in rows), rows
    assert rig.sha256(f'{d}/dst') == rig.sha256(f'{d}/src')
    src, dst = rig.lstat(f'{d}/src'), rig.lstat(f'{d}/dst')
    assert dst['size'] == src['size']
    assert dst['blocks'] <= src['blocks'] * 2


def test_ext4_always_fails_clearly_and_leaves_nothing(pool_dir_on, rig):
    d = pool_dir_on('ext4')
    _spread_image(rig, f'{d}/src', size=64 * MiB, pieces=16)
    before = rig.tree(d)
    with pytest.raises(errors.CloneUnsupported, match='FICLONE'):
        files.clone(f'{d}/src', f'{d}/dst', 'always')
    assert rig.tree(d) == before


def test_ext4_auto_falls_back_to_sparse_copy(pool_dir_on, rig):
    d = pool_dir_on('ext4')
    _spread_image(rig, f'{d}/src', size=64 * MiB, pieces=16)
    assert files.clone(f'{d}/src', f'{d}/dst', 'auto') == 'copy'
    src, dst = rig.lstat(f'{d}/src'), rig.lstat(f'{d}/dst')
    assert dst['size'] == src['size']
    assert dst['blocks'] == src['blocks']
    assert rig.sha256(f'{d}/dst') == rig.sha256(f'{d}/src')


def test_clone_across_filesystems_copies(pool_dir_on, rig):
    src_dir, dst_dir = pool_dir_on('xfs'), pool_dir_on('ext4')
    _spread_image(rig, f'{src_dir}/src', size=16 * MiB, pieces=4)
    assert files.clone(f'{src_dir}/src', f'{dst_dir}/dst', 'auto') == 'copy'
    assert rig.sha256(f'{dst_dir}/dst') == rig.sha256(f'{src_dir}/src')


def test_reflink_probe(pool_dir_on):
    assert files.reflink_supported(pool_dir_on('xfs')) is True
    assert files.reflink_supported(pool_dir_on('btrfs')) is True
    assert files.reflink_supported(pool_dir_on('ext4')) is False


def test_clone_refuses_existing_destination(xfs_dir, rig):
    files.create(f'{xfs_dir}/src', 4096)
    rig.write(f'{xfs_dir}/dst', b'keep')
    with pytest.raises(errors.AlreadyExists):
        files.clone(f'{xfs_dir}/src', f'{xfs_dir}/dst')
    assert rig.read(f'{xfs_dir}/dst') == b'keep'
