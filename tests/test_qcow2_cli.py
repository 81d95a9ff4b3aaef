"""The qcow2 pool's new operations through the real CLI and volsepd (issue
15): imports from a stream and from a file (handed over as a descriptor),
a stream that ends short, exports to stdout and to a qcow2 file, revert,
resize and clone, with `chain validate` after each step."""

import os
import subprocess

from tests import service_helpers as sh
from tests.test_service import service  # noqa: F401

MiB = 1 << 20
ENV = {'PATH': '/usr/bin:/bin'}


def _run(service, *args, input_data=None, stdin=None):
    proc = subprocess.run(
        [f'{sh.VENV}/volsep', '--socket', service.socket, *args],
        input=input_data, stdin=stdin, capture_output=True, env=ENV,
        timeout=300)
    return proc.returncode, proc.stdout, proc.stderr.decode(errors='replace')


def _ok(service, *args, input_data=None):
    rc, out, err = _run(service, *args, input_data=input_data)
    assert rc == 0, (args, err)
    return out


def _validated(service, address):
    return service.json('chain', 'validate', address)


def _state(service, rig, address):
    directory = os.path.dirname(service.json('volume', 'info',
                                             address)['path'])
    return (rig.tree(directory), service.json('volume', 'revisions', address),
            _validated(service, address))


def _export(service, address):
    return _ok(service, 'volume', 'export', address, '-')


def test_qcow2_volume_operations_through_the_cli(service, rig, tmp_path):
    pool_dir = f'{service.state_dir}/pools/chains'
    service.json('pool', 'add', 'chains', 'qcow2', '-o',
                 f'dir_path={pool_dir}', '-o', 'revisions_to_keep=3')
    service.json('volume', 'create', 'vm:root', '--pool', 'chains',
                 '--size', '2M', '--format', 'raw')
    first = os.urandom(2 * MiB)
    _ok(service, 'volume', 'import', 'vm:root', '-', '--size', '2M',
        input_data=first)
    assert _export(service, 'vm:root') == first
    assert len(_validated(service, 'vm:root')) == 2
    # A file: handed over as a descriptor and copied by the root side.
    second = os.urandom(MiB) + bytes(MiB)
    image = tmp_path / 'second.raw'
    image.write_bytes(second)
    _ok(service, 'volume', 'import', 'vm:root', str(image))
    assert b'import_from_descriptor' in rig.read(
        f'{service.state_dir}/audit.log')
    assert _export(service, 'vm:root') == second
    # A qcow2 file goes by descriptor too, and is inspected by the root
    # side where it lies before qemu-img reads it.
    as_qcow2 = tmp_path / 'second.qcow2'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(image), str(as_qcow2)], check=True, env=ENV)
    _ok(service, 'volume', 'import', 'vm:root', str(as_qcow2), '--format',
        'qcow2')
    assert _export(service, 'vm:root') == second
    before = _state(service, rig, 'vm:root')
    # A stream that ends short changes nothing.
    rc, _, err = _run(service, 'volume', 'import', 'vm:root', '-', '--size',
                      '2M', input_data=os.urandom(MiB))
    assert rc == 1, err
    assert _state(service, rig, 'vm:root') == before
    # Exported as qcow2 into a file: the same data, standalone.
    qcow2 = tmp_path / 'out.qcow2'
    _ok(service, 'volume', 'export', 'vm:root', str(qcow2), '--format',
        'qcow2')
    rc, out, err = rig.run(['qemu-img', 'compare', '-f', 'raw', '-F',
                            'qcow2', str(image), str(qcow2)])
    assert rc == 0, (out, err)
    # Revert to the first import, then back.
    ids = [r['id'] for r in service.json('volume', 'revisions', 'vm:root')]
    _ok(service, 'volume', 'revert', 'vm:root', str(ids[-2]))  # the first
    assert _export(service, 'vm:root') == first
    _validated(service, 'vm:root')
    _ok(service, 'volume', 'revert', 'vm:root')     # the latest: undone
    assert _export(service, 'vm:root') == second
    rc, _, err = _run(service, 'volume', 'revert', 'vm:root', '999')
    assert rc == 1 and err.startswith('volsep: RevisionNotFound:'), err
    # Resize: grown tail reads zeros; a shrink needs --force.
    _ok(service, 'volume', 'resize', 'vm:root', '3M')
    assert _export(service, 'vm:root') == second + bytes(MiB)
    rc, _, err = _run(service, 'volume', 'resize', 'vm:root', '1M')
    assert rc == 1 and 'force' in err, err
    _validated(service, 'vm:root')
    # Clone into another volume of the pool.
    service.json('volume', 'create', 'copy:root', '--pool', 'chains',
                 '--size', '1M')
    _ok(service, 'volume', 'clone', 'vm:root', 'copy:root')
    assert _export(service, 'copy:root') == second + bytes(MiB)
    _validated(service, 'copy:root')
    info = service.json('volume', 'info', 'copy:root')
    assert info['size'] == 3 * MiB
