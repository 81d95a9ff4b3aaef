"""The LV names of the lvm_thin driver: injective, reversible, free of
LVM's reserved words, and refused by the root side outside an allowed thin
pool (the host has no device-mapper: what needs real LVs runs in the guest,
tests/guest)."""

import itertools

import pytest

from volsep.privileged import errors
from volsep.privileged import lvm
from volsep.privileged import lvm_names

SUFFIXES = ('c1', 'c2', 'c10', 'c999999999999999999', 'w', 't', 'e')
# Every name of up to three characters over an alphabet that holds the
# separators LVM and volsep use, so any ambiguity would show up here.
ALPHABET = 'au-_.1'


def _names(longest):
    for length in range(1, longest + 1):
        for chars in itertools.product(ALPHABET, repeat=length):
            name = ''.join(chars)
            if lvm_names.VOLSEP_NAME.match(name):
                yield name


def test_the_encoding_is_injective_and_reversible():
    names = list(_names(3))
    seen = {}
    for domain, volume in itertools.product(names, repeat=2):
        for suffix in ('c12', 'w', 't'):
            lv = lvm_names.lv_name(domain, volume, suffix)
            assert lv not in seen, (lv, seen.get(lv), (domain, volume))
            seen[lv] = (domain, volume, suffix)
            assert lvm_names.parse_lv_name(lv) == (domain, volume, suffix)
    assert len(seen) == len(names) ** 2 * 3


def test_look_alike_volumes_never_meet():
    ours = {lvm_names.lv_name('some-vm-root', 'private', s) for s in SUFFIXES}
    theirs = {lvm_names.lv_name('some-vm', 'root-private', s)
              for s in SUFFIXES}
    assert not ours & theirs
    for a, b in itertools.product(ours, theirs):
        assert not a.startswith(b) and not b.startswith(a)


@pytest.mark.parametrize('domain,volume', [
    ('x_tmeta', 'y'), ('vm', 'x_rimage_0'), ('a_cdata', 'b_mlog'),
    ('snapshot', 'pvmove'), ('vm', 'a_pmspare')])
def test_names_hold_no_reserved_lvm_words(domain, volume):
    for suffix in SUFFIXES:
        lv = lvm_names.lv_name(domain, volume, suffix)
        assert '_' not in lv
        assert not lv.startswith(('snapshot', 'pvmove'))
        assert set(lv) <= set('abcdefghijklmnopqrstuvwxyz'
                              'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-')


@pytest.mark.parametrize('name', [
    'vs+a+b', 'vs+a+b+x', 'vs+a+b+c0', 'vs+a+b+c01', 'vs+-a+b+w',
    'vs+a+b+w+w', 'xs+a+b+w', 'vs+a++b+w', 'vs+a+b+-', 'vs+a+b+c1 ',
    'vs+' + 'a' * 65 + '+b+w'])
def test_names_that_are_not_volseps_are_not_parsed(name):
    assert lvm_names.parse_lv_name(name) is None


def test_a_name_too_long_for_device_mapper_is_refused():
    lvm_names.check_length('vg', 'd' * 40, 'v' * 40)
    with pytest.raises(errors.InvalidArgument, match='too long'):
        lvm_names.check_length('vg', 'd' * 60, 'v' * 60)
    with pytest.raises(errors.InvalidArgument, match='too long'):
        lvm_names.check_length('vg', 'a' + '-' * 50, 'b-' * 25)


@pytest.mark.parametrize('address', [
    'vg/pool/d/v', 'vg/pool/d/v/w/x', '../pool/d/v/w', 'vg/../d/v/w',
    'vg/pool/../v/w', 'vg/pool/d/a b/w', 'vg/pool/d/v/c0', 'vg/pool/d/v/x',
    'vg/pool/d/v/c1/', '-vg/pool/d/v/w', 'vg/snapshot1/d/v/w',
    'vg/pool/d+x/v/w', 'vg/pool/d/v!/w', 'vg/pool/_d/v/w', 7, None,
    ['vg', 'pool', 'd', 'v', 'w']])
def test_hostile_lv_addresses_are_refused(address):
    with pytest.raises(errors.InvalidArgument):
        lvm_names.LvAddress(address)


@pytest.mark.parametrize('call', [
    lambda: lvm.report('volsep_vg', 'tpool'),
    lambda: lvm.create('volsep_vg/tpool/d/v/t', 1 << 20, False),
    lambda: lvm.snapshot('volsep_vg/tpool/d/v/c1', 'volsep_vg/tpool/d/v/w',
                         True),
    lambda: lvm.commit('volsep_vg/tpool/d/v/w', 'c2', ['c1']),
    lambda: lvm.resize('volsep_vg/tpool/d/v/c1', 2 << 20, False),
    lambda: lvm.activate('volsep_vg/tpool/d/v/c1', True),
    lambda: lvm.remove('volsep_vg/tpool/d/v/c1'),
    lambda: lvm.write_at('volsep_vg/tpool/d/v/t', 0, b'x'),
    lambda: lvm.read_at('volsep_vg/tpool/d/v/e', 0, 1),
    lambda: lvm.flush('volsep_vg/tpool/d/v/t'),
])
def test_every_entrypoint_refuses_a_thin_pool_the_root_side_does_not_allow(
        call):
    # The host's root configuration allows no thin pool at all.
    with pytest.raises(errors.InvalidArgument,
                       match='not allowed by the root configuration'):
        call()
