"""qemu-img through the root side, for real, and its confinement."""

import json
import os
import sys

import pytest

from volsep.privileged import errors
from volsep.privileged import qemu

PYTHON = sys.executable   # the venv under test (VOLSEP_VENV)


def test_info_on_real_qcow2_returns_parsed_json(xfs_dir):
    qemu.create(f'{xfs_dir}/a.qcow2', 'qcow2', 1 << 30)
    data = qemu.info(f'{xfs_dir}/a.qcow2', 'qcow2')
    assert data['format'] == 'qcow2'
    assert data['virtual-size'] == 1 << 30
    assert data['filename'] == f'{xfs_dir}/a.qcow2'


def test_overlay_records_backing_and_format(xfs_dir, rig):
    qemu.create(f'{xfs_dir}/base.raw', 'raw', 1 << 20)
    qemu.create(f'{xfs_dir}/top.qcow2', 'qcow2', 1 << 20,
                backing=f'{xfs_dir}/base.raw', backing_fmt='raw')
    rc, out, err = rig.run(['qemu-img', 'info', '-f', 'qcow2', '-U',
                            '--output=json', f'{xfs_dir}/top.qcow2'])
    assert rc == 0, err
    data = json.loads(out)
    assert data['backing-filename'] == f'{xfs_dir}/base.raw'
    assert data['backing-filename-format'] == 'raw'
    # An image with a backing file is not one qemu.info reads for anyone.
    with pytest.raises(errors.UnsafeImage):
        qemu.info(f'{xfs_dir}/top.qcow2', 'qcow2')


def test_overlay_backing_outside_roots_refused(xfs_dir, outside_dir, rig):
    before = rig.tree(xfs_dir)
    with pytest.raises(errors.PathRefused):
        qemu.create(f'{xfs_dir}/top.qcow2', 'qcow2', 1 << 20,
                    backing=f'{outside_dir}/secret', backing_fmt='raw')
    assert rig.tree(xfs_dir) == before


def test_declared_format_mismatch_is_refused(xfs_dir):
    qemu.create(f'{xfs_dir}/a.raw', 'raw', 1 << 20)
    with pytest.raises(errors.UnsafeImage):
        qemu.info(f'{xfs_dir}/a.raw', 'qcow2')


def test_convert_round_trip(xfs_dir, rig):
    qemu.create(f'{xfs_dir}/a.raw', 'raw', 8 << 20)
    rig.pwrite(f'{xfs_dir}/a.raw', 4096, b'volsep' * 1000)
    qemu.convert(f'{xfs_dir}/a.raw', 'raw', f'{xfs_dir}/b.qcow2', 'qcow2')
    qemu.convert(f'{xfs_dir}/b.qcow2', 'qcow2', f'{xfs_dir}/c.raw', 'raw')
    assert rig.sha256(f'{xfs_dir}/c.raw') == rig.sha256(f'{xfs_dir}/a.raw')
    rc, _, err = rig.run(['qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2',
                          f'{xfs_dir}/a.raw', f'{xfs_dir}/b.qcow2'])
    assert rc == 0, err


def test_unknown_formats_refused(xfs_dir):
    qemu.create(f'{xfs_dir}/a.raw', 'raw', 1 << 20)
    with pytest.raises(errors.InvalidArgument):
        qemu.info(f'{xfs_dir}/a.raw', 'file')
    with pytest.raises(errors.InvalidArgument):
        qemu.create(f'{xfs_dir}/b', 'vmdk', 1 << 20)


def _tight_limits_info(rig, image, **limits):
    """qemu.info in a fresh root process whose root config sets tiny
    limits (limits come only from root-owned configuration)."""
    work = os.environ['VOLSEP_TEST_WORK']
    conf_dir = f'{work}/limits-{os.getpid()}'
    rig.mkdir(conf_dir)
    with open(os.environ['VOLSEP_PRIVILEGED_CONFIG']) as f:
        roots = next(line for line in f if line.startswith('allowed_roots'))
    text = '[privileged]\n' + roots + f'audit_log = {conf_dir}/audit.log\n'
    text += ''.join(f'{k} = {v}\n' for k, v in limits.items())
    rig.write(f'{conf_dir}/privileged.conf', text.encode(), 0o644)
    code = ('import json\n'
            'from volsep.privileged import contexts, qemu, errors\n'
            'contexts.file_ops.set_client_mode(False)\n'
            'try:\n'
            f'    qemu.info({image!r}, "qcow2")\n'
            '    print(json.dumps(["ok", ""]))\n'
            'except errors.PrivilegedError as e:\n'
            '    print(json.dumps([type(e).__name__, str(e)]))\n')
    env = {'VOLSEP_PRIVILEGED_CONFIG': f'{conf_dir}/privileged.conf',
           'PATH': '/usr/bin:/bin'}
    rc, out, err = rig.run([PYTHON, '-c', code], env=env)
    rig.rmtree(conf_dir)
    assert rc == 0, err
    return json.loads(out)


def test_address_space_limit_gives_limits_exceeded(xfs_dir, rig):
    qemu.create(f'{xfs_dir}/a.qcow2', 'qcow2', 1 << 30)
    assert _tight_limits_info(rig, f'{xfs_dir}/a.qcow2')[0] == 'ok'
    kind, message = _tight_limits_info(
        rig, f'{xfs_dir}/a.qcow2', qemu_img_address_space_mib=16)
    assert kind == 'LimitsExceeded', message
    assert 'limits' in message
