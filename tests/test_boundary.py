"""The trust boundary itself: who runs as what, and who may write where."""

import os

import pytest

from tests.procs import children as _children
from tests.procs import status as _status
from volsep.privileged import errors
from volsep.privileged import files


def test_caller_is_unprivileged_and_daemons_are_root():
    assert os.getuid() != 0 and os.geteuid() != 0
    uids = [int(_status(pid)['Uid'].split()[0]) for pid in _children()]
    # volsep's two daemons and the rig
    assert uids.count(0) >= 3


def test_volsep_daemons_keep_only_file_capabilities():
    from volsep.privileged import contexts
    wanted = sum(1 << cap for cap in contexts.FILE_CAPABILITIES)
    caps = [int(_status(pid)['CapEff'], 16) for pid in _children()]
    assert caps.count(wanted) == 2, [hex(c) for c in caps]


def test_user_cannot_write_pool_but_entrypoints_can(xfs_dir, rig):
    with pytest.raises(PermissionError):
        open(f'{xfs_dir}/direct', 'w')
    files.create(f'{xfs_dir}/vol.img', 1 << 20)
    st = rig.lstat(f'{xfs_dir}/vol.img')
    assert st['uid'] == 0
    assert st['mode'] & 0o777 == 0o600
    assert st['size'] == 1 << 20
    with pytest.raises(PermissionError):
        open(f'{xfs_dir}/vol.img', 'rb')


def test_created_file_is_sparse_and_zero(any_root, rig):
    _, d = any_root
    files.create(f'{d}/v.img', 64 << 20)
    st = rig.lstat(f'{d}/v.img')
    assert st['size'] == 64 << 20
    assert st['blocks'] * 512 <= 64 << 10
    assert rig.read(f'{d}/v.img', 0, 4096) == b'\0' * 4096


def test_create_refuses_existing_name(xfs_dir, rig):
    rig.write(f'{xfs_dir}/v.img', b'keep')
    with pytest.raises(errors.AlreadyExists):
        files.create(f'{xfs_dir}/v.img', 4096)
    assert rig.read(f'{xfs_dir}/v.img') == b'keep'


def test_modes_are_explicit_despite_umask_zero(xfs_dir, rig):
    files.mkdir(f'{xfs_dir}/sub', 0o750)
    files.create(f'{xfs_dir}/sub/a', 1, 0o640)
    assert rig.lstat(f'{xfs_dir}/sub')['mode'] & 0o777 == 0o750
    assert rig.lstat(f'{xfs_dir}/sub/a')['mode'] & 0o777 == 0o640
    with pytest.raises(errors.InvalidArgument):
        files.create(f'{xfs_dir}/sub/b', 1, 0o666)
    with pytest.raises(errors.InvalidArgument):
        files.mkdir(f'{xfs_dir}/sub2', 0o777)


def test_an_allowed_root_is_followed_where_its_path_leads(rig):
    """The root side walks an allowed root once and keeps its descriptor
    (privileged/roots.py). When root moves the directory and makes a new
    one at the configured path, calls land in the new one; when the path
    leads nowhere, calls are refused; and walking again leaks nothing."""
    import json
    import sys
    conf_dir = f'{os.environ["VOLSEP_TEST_WORK"]}/moved-{os.getpid()}'
    pools = f'{conf_dir}/pools'
    rig.mkdir(conf_dir)
    rig.mkdir(pools)
    rig.write(f'{conf_dir}/privileged.conf',
              f'[privileged]\nallowed_roots = {pools}\n'
              f'audit_log = {conf_dir}/audit.log\n'.encode(), 0o644)
    code = ('import json, os, shutil\n'
            'from volsep.privileged import contexts, errors, files\n'
            'contexts.file_ops.set_client_mode(False)\n'
            f'pools = {pools!r}\n'
            'files.create(pools + "/a", 4096)\n'
            'descriptors = len(os.listdir("/proc/self/fd"))\n'
            'for n in range(5):\n'
            '    os.rename(pools, pools + f"-old{n}")\n'
            '    os.mkdir(pools, 0o755)\n'
            '    files.create(pools + f"/b{n}", 4096)\n'
            'seen = {"new": sorted(os.listdir(pools)),\n'
            '        "old0": sorted(os.listdir(pools + "-old0")),\n'
            '        "old1": sorted(os.listdir(pools + "-old1")),\n'
            '        "leaked": len(os.listdir("/proc/self/fd")) - descriptors}\n'
            'shutil.rmtree(pools)\n'
            'try:\n'
            '    files.create(pools + "/c", 4096)\n'
            '    seen["gone"] = "created"\n'
            'except errors.PrivilegedError as e:\n'
            '    seen["gone"] = [type(e).__name__, str(e)]\n'
            'print(json.dumps(seen))\n')
    rc, out, err = rig.run([sys.executable, '-c', code], env={
        'VOLSEP_PRIVILEGED_CONFIG': f'{conf_dir}/privileged.conf',
        'PATH': '/usr/bin:/bin'})
    rig.rmtree(conf_dir)
    assert rc == 0, err
    seen = json.loads(out)
    assert seen['new'] == ['b4']
    assert seen['old0'] == ['a'] and seen['old1'] == ['b0']
    assert seen['leaked'] == 0
    kind, message = seen['gone']
    assert kind == 'ConfigurationError' and 'cannot be opened' in message


def test_an_allowed_root_the_frontend_could_swap_is_refused(rig, tmp_path,
                                                            outside_dir):
    """Found while wiring sudo mode: the root side opened each allowed root
    by path and trusted what it found. With the root below a directory the
    frontend's uid owns (a state directory of the service user's), the
    frontend replaced the root by a symlink to a host directory, and root
    calls then read and deleted host files. A root whose chain is not
    root's alone is now refused, and the host file is untouched."""
    import json
    import sys
    pools = f'{tmp_path}/pools'
    os.symlink(outside_dir, pools)         # done as the frontend's uid
    conf_dir = f'{os.environ["VOLSEP_TEST_WORK"]}/swap-{os.getpid()}'
    rig.mkdir(conf_dir)
    rig.write(f'{conf_dir}/privileged.conf',
              f'[privileged]\nallowed_roots = {pools}\n'
              f'audit_log = {conf_dir}/audit.log\n'.encode(), 0o644)
    before = rig.sha256(f'{outside_dir}/secret')
    code = ('import json\n'
            'from volsep.privileged import contexts, errors, files\n'
            'contexts.file_ops.set_client_mode(False)\n'
            'results = []\n'
            f'for call in (lambda: files.read_at({pools!r} + "/secret", 0, '
            '12),\n'
            f'             lambda: files.unlink({pools!r} + "/secret")):\n'
            '    try:\n'
            '        results.append(["ok", repr(call())])\n'
            '    except errors.PrivilegedError as e:\n'
            '        results.append([type(e).__name__, str(e)])\n'
            'print(json.dumps(results))\n')
    rc, out, err = rig.run([sys.executable, '-c', code], env={
        'VOLSEP_PRIVILEGED_CONFIG': f'{conf_dir}/privileged.conf',
        'PATH': '/usr/bin:/bin'})
    rig.rmtree(conf_dir)
    assert rc == 0, err
    for kind, message in json.loads(out):
        assert kind == 'ConfigurationError', message
        assert 'not safe' in message
    assert rig.sha256(f'{outside_dir}/secret') == before
