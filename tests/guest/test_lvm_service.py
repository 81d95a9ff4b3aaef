"""End to end in the guest: a real volsepd (frontend dropped to 'volsep',
root daemons as root) with an lvm_thin pool, driven by the real CLI."""

import os
import uuid

from lxml import etree

from tests import service_helpers as sh
from tests.guest import lvm_helpers as lh
from volsep.privileged import lvm_names

TEST_USER = os.environ.get('VOLSEP_TEST_USER', 'volsep-test')
EVERYONE = {'rules': [{'users': ['root', TEST_USER, 'volsep'],
                       'allow': ['*']}]}
MiB = lh.MiB


def _root_config(state_dir):
    """The service's own root configuration: its pool root and audit log,
    and the guest's thin pool settings."""
    with open(os.environ['VOLSEP_PRIVILEGED_CONFIG']) as f:
        lvm_lines = [line for line in f.read().splitlines()
                     if line.startswith(('allowed_thin_pools', 'lvm_'))]
    assert lvm_lines, 'tests/guest/inside wrote no thin pool settings'
    return ('[privileged]\n'
            f'allowed_roots = {state_dir}/pools\n'
            f'audit_log = {state_dir}.audit.log\n' + '\n'.join(lvm_lines) +
            '\n')


def test_lvm_thin_through_volsepd_and_the_cli(rig, tmp_path):
    state_root = os.environ['VOLSEP_TEST_STATE_ROOT']
    state = f'{state_root}/svc-{uuid.uuid4().hex[:8]}'
    conf = f'{state}.privileged.conf'
    rig.write(conf, _root_config(state).encode(), 0o644)
    service = sh.Service(state, policy=EVERYONE,
                         extra_args=['--privileged-config', conf])
    service.start()
    domain = f'e{uuid.uuid4().hex[:6]}'
    try:
        pool = service.json('pool', 'add', 'thin', 'lvm_thin', '-o',
                            f'volume_group={lh.VG}', '-o',
                            f'thin_pool={lh.THIN_POOL}')
        assert pool['driver'] == 'lvm_thin' and pool['size'] > 0
        image = tmp_path / 'in.raw'
        data = os.urandom(1 << 20) + bytes(2 << 20) + b"E" * (1 << 20)
        image.write_bytes(data)
        service.json('volume', 'create', f'{domain}:root', '--pool', 'thin',
                     '--size', '4M')
        service.json('volume', 'import', f'{domain}:root', str(image),
                     '--force')
        started = service.json('domain', 'start', domain)
        device = started[0]['path']
        assert device == \
            f'/dev/{lh.VG}/{lvm_names.lv_name(domain, "root", "w")}'
        assert rig.read(device, 0, len(data)) == data
        xml = service.cli('domain', 'disk-xml', domain)[1]
        disk = etree.fromstring(xml.encode())
        assert disk.get('type') == 'block'
        assert disk.find('source').get('dev') == device
        rig.pwrite(device, 0, b'W' * 4096)
        service.json('domain', 'stop', domain)
        revisions = service.json('volume', 'revisions', f'{domain}:root')
        assert [r['id'] for r in revisions] == [2]
        exported = tmp_path / 'out.raw'
        rc, out, err = service.cli('volume', 'export', f'{domain}:root',
                                   str(exported))
        assert rc == 0, (out, err)
        assert exported.read_bytes() == b'W' * 4096 + data[4096:]
        rc, out, err = service.cli('audit', 'verify')
        assert rc == 0, (out, err)
        service.json('volume', 'remove', f'{domain}:root')
        assert lh.volsep_lvs(rig, domain, 'root') == []
    finally:
        if service.pid is not None:
            status = service.stop()
            assert status == 0, service.output()
        rig.rmtree(state)
