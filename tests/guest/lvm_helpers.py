"""What the lvm_thin tests need inside the guest: the thin pools
tests/guest/inside made, and lvm run as root (through the tests' root
helper, tests/rig.py) to look at and change LVs behind volsep's back."""

import configparser
import hashlib
import json
import os

LVM = dict(item.split('=', 1)
           for item in os.environ.get('VOLSEP_TEST_LVM', '').split())
VG = LVM.get('vg', '')
THIN_POOL = LVM.get('thin_pool', '')
TINY = LVM.get('tiny', '')
DENIED = LVM.get('denied', '')
MiB = 1 << 20


def _root_settings():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.environ['VOLSEP_PRIVILEGED_CONFIG'])
    return parser['privileged']


def lvm_config():
    """The --config the root side passes in the guest (lvm_udev false)."""
    extra = _root_settings().get('lvm_extra_config', '')
    return f'activation/udev_sync=0 activation/udev_rules=0 {extra}'.strip()


def lvm(rig, *args, check=True):
    """Run ``lvm ARGS`` as root the way the root side does; returns
    (rc, stdout, stderr) as text."""
    argv = [_root_settings().get('lvm_command', '/sbin/lvm'), args[0],
            '--config', lvm_config(), *args[1:]]
    rc, out, err = rig.run(argv, env={'LC_ALL': 'C', 'DM_DISABLE_UDEV': '1',
                                      'PATH': '/usr/sbin:/usr/bin:/sbin'})
    if check:
        assert rc == 0, (argv, err.decode())
    return rc, out.decode(), err.decode()


def lvs(rig, target=None):
    """{LV name: row} of the test VG (or of ``target``)."""
    _, out, _ = lvm(rig, 'lvs', '--reportformat', 'json', '--units', 'b',
                    '--nosuffix', '-o', 'lv_name,lv_size,pool_lv,origin,'
                    'lv_active,segtype,data_percent', target or VG)
    return {row['lv_name']: row
            for row in json.loads(out)['report'][0]['lv']}


def volsep_lvs(rig, domain, volume):
    """Names of the LVs volsep holds for DOMAIN:VOLUME."""
    from volsep.privileged import lvm_names
    return sorted(name for name in lvs(rig)
                  if (lvm_names.parse_lv_name(name) or ())[:2] ==
                  (domain, volume))


def digest(rig, device):
    """sha256 of an LV's content; activates it for the read if needed
    (committed generations are kept inactive)."""
    lv = device.split('/', 2)[2]
    was_active = lvs(rig)[lv.split('/', 1)[1]]['lv_active'] == 'active'
    if not was_active:
        lvm(rig, 'lvchange', '-ay', '-K', lv)
    try:
        return rig.sha256(device)
    finally:
        if not was_active:
            lvm(rig, 'lvchange', '-an', lv)


def sha256(data):
    return hashlib.sha256(data).hexdigest()
