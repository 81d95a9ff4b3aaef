"""A domain start reads each persistent volume's storage once: what the
check before starting read is reused by the start, unless the volume was
changed in between, and then read again (file, file-reflink)."""

import pytest

from tests import storage_helpers as h
from volsep.drivers import directory
from volsep.privileged import files

MiB = h.MiB


@pytest.fixture(params=h.POOL_KINDS, ids=[k[0] for k in h.POOL_KINDS])
def env(request, tmp_path, rig):
    mgr, base = h.make_manager(tmp_path, request.param, rig)
    yield mgr
    rig.rmtree(base)


def _commit(mgr, rig, data):
    path = mgr.start_domain('vm')[0]['path']
    h.vm_write(rig, path, 0, data)
    mgr.stop_domain('vm')


def test_a_start_lists_the_volume_once(env, rig, monkeypatch):
    env.create_volume('vm:root', 'p', 4 * MiB)
    _commit(env, rig, b'A' * 4096)
    listed = []
    real = files.list_dir
    monkeypatch.setattr(files, 'list_dir',
                        lambda path: listed.append(path) or real(path))
    path = env.start_domain('vm')[0]['path']
    assert len(listed) == 1, listed
    assert rig.read(path, 0, 4096) == b'A' * 4096
    env.stop_domain('vm')


def test_a_volume_changed_after_its_check_is_read_again(env, rig,
                                                        monkeypatch):
    env.create_volume('vm:root', 'p', 4 * MiB)
    _commit(env, rig, b'A' * 4096)
    _commit(env, rig, b'B' * 4096)
    real = directory.DirectoryVolume.verify
    changed = []

    def verify_then_revert(volume):
        listing = real(volume)
        if not changed:
            # Between the check and the start, another request reverts
            # the volume: the committed image the check saw is retired.
            changed.append(env.revert('vm:root'))
        return listing
    monkeypatch.setattr(directory.DirectoryVolume, 'verify',
                        verify_then_revert)
    path = env.start_domain('vm')[0]['path']
    assert changed
    assert rig.read(path, 0, 4096) == b'A' * 4096
    env.stop_domain('vm')
