"""What a helper binary started by the root side may do: no capabilities,
rlimits, and (Landlock) only the files it was handed."""

import os

import pytest

from volsep.privileged import landlock
from volsep.privileged import qemu


def _status(text):
    return dict(line.split(':\t', 1) for line in text.splitlines()
                if ':\t' in line)


def test_helpers_run_without_capabilities_or_new_privileges(rig):
    # rig is a full-root process: confinement must strip all of it.
    status, _ = rig.confined_status()
    status = _status(status)
    for field in ('CapEff', 'CapPrm', 'CapInh', 'CapAmb'):
        assert int(status[field], 16) == 0, (field, status[field])
    assert status['NoNewPrivs'].strip() == '1'
    assert status['Uid'].split()[0] == '0'


def test_helpers_run_under_rlimits(rig):
    _, limits = rig.confined_status()
    limits = {line[:26].strip(): line[26:].split() for line in
              limits.splitlines()[1:]}
    assert limits['Max cpu time'][:2] == ['10', '10']
    assert limits['Max address space'][:2] == [str(512 << 20)] * 2


def test_qemu_img_path_is_absolute():
    assert qemu.QEMU_IMG.startswith('/usr/bin/')


def test_kernel_has_landlock():
    # The suite's premise: without it helpers are not run at all.
    assert landlock.abi_version() >= 3


@pytest.fixture
def files(xfs_dir, outside_dir, rig):
    rig.write(f'{xfs_dir}/given', b'given')
    rig.write(f'{xfs_dir}/beside', b'beside')
    return {'given': f'{xfs_dir}/given', 'beside': f'{xfs_dir}/beside',
            'secret': f'{outside_dir}/secret'}


def test_a_confined_uid_0_child_opens_only_what_it_was_given(files, rig):
    given = [files['given']]
    assert rig.confined_open(files['given'], os.O_RDONLY, given)[0] == 0
    for name in ('beside', 'secret'):
        rc, err = rig.confined_open(files[name], os.O_RDONLY, given)
        assert rc == 1 and 'PermissionError' in err, (name, err)
    # Read access to a file is not write access to it.
    rc, err = rig.confined_open(files['given'], os.O_WRONLY, given)
    assert rc == 1 and 'PermissionError' in err, err
    assert rig.confined_open(files['given'], os.O_RDWR, (),
                             given)[0] == 0
    # System files a program needs are readable, never writable.
    rc, err = rig.confined_open('/usr/bin/qemu-img', os.O_WRONLY, given)
    assert rc == 1 and 'PermissionError' in err, err
    for host_file in ('/etc/shadow', '/proc/1/environ', '/root/.bashrc'):
        if os.path.exists(host_file):
            rc, err = rig.confined_open(host_file, os.O_RDONLY, given)
            assert rc == 1 and 'PermissionError' in err, (host_file, err)


def test_a_rule_follows_the_inode_not_the_name(files, rig):
    """Granted a file, a child cannot open another file that now bears
    that file's old name, and can open the granted one under its new
    name."""
    moved = files['given'] + '.moved'
    rig.rename(files['given'], moved)
    rig.rename(files['beside'], files['given'])
    rc, err = rig.confined_open(files['given'], os.O_RDONLY, [moved])
    assert rc == 1 and 'PermissionError' in err, err
    assert rig.confined_open(moved, os.O_RDONLY, [moved])[0] == 0
