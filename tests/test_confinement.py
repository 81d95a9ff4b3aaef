"""What a helper binary started by the root side may do."""

from volsep.privileged import qemu


def _status(text):
    return dict(line.split(':\t', 1) for line in text.splitlines()
                if ':\t' in line)


def test_helpers_run_without_capabilities_or_new_privileges(rig):
    # rig is a full-root process: confinement must strip all of it.
    rc, out, err = rig.confined_status(['/usr/bin/cat', '/proc/self/status'])
    assert rc == 0, err
    status = _status(out)
    for field in ('CapEff', 'CapPrm', 'CapInh', 'CapAmb'):
        assert int(status[field], 16) == 0, (field, status[field])
    assert status['NoNewPrivs'].strip() == '1'
    assert status['Uid'].split()[0] == '0'


def test_helpers_run_under_rlimits(rig):
    rc, out, err = rig.confined_status(['/usr/bin/cat', '/proc/self/limits'])
    assert rc == 0, err
    limits = {line[:26].strip(): line[26:].split() for line in
              out.splitlines()[1:]}
    assert limits['Max cpu time'][:2] == ['10', '10']
    assert limits['Max address space'][:2] == [str(512 << 20)] * 2


def test_qemu_img_path_is_absolute():
    assert qemu.QEMU_IMG.startswith('/usr/bin/')
