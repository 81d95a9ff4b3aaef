"""The names of volsep's thin LVs, and how the root side parses the LV
addresses the frontend sends.

A volume DOMAIN:VOLUME owns these LVs of its thin pool:

    vs+DOMAIN+VOLUME+cN   committed generation N (N only grows); the
                          highest is the current content, the others
                          are revisions
    vs+DOMAIN+VOLUME+w    the working copy a running VM writes
    vs+DOMAIN+VOLUME+t    the next generation while it is being built
                          (import, clone, resize, revert, clear)
    vs+DOMAIN+VOLUME+e    a private snapshot an export reads

Domain and volume names never hold '+', so '+' followed by a letter or
digit separates fields. Each '_' is written '+-', which no field can begin
with: the encoding stays injective and the names hold no '_', so none can
meet LVM's reserved substrings (_tmeta, _rimage, ...) or another volume's
LVs. Clean-up compares whole decoded names, never prefixes.
"""

import re

from volsep.privileged import errors

VOLSEP_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z')
# What LVM accepts for a VG or a thin pool, without its reserved names.
LVM_NAME = re.compile(r'[A-Za-z0-9+.][A-Za-z0-9+_.-]{0,63}\Z')
SUFFIX = re.compile(r'(?:c[1-9][0-9]{0,17}|w|t|e)\Z')
MAX_GENERATION = 10 ** 18 - 1
PREFIX = 'vs+'
# device-mapper names (VG-LV, each '-' doubled) hold at most 127 bytes.
DM_NAME_MAX = 127
LONGEST_SUFFIX = 'c' + '9' * 18


def volsep_name(value, what):
    if type(value) is not str or not VOLSEP_NAME.match(value):
        raise errors.InvalidArgument(f'{what} name {value!r} is not valid')
    return value


def lvm_name(value, what):
    if type(value) is not str or not LVM_NAME.match(value) or \
            value in ('.', '..') or value.startswith(('snapshot', 'pvmove')):
        raise errors.InvalidArgument(f'{what} name {value!r} is not valid')
    return value


def suffix(value):
    if type(value) is not str or not SUFFIX.match(value):
        raise errors.InvalidArgument(f'LV suffix {value!r} is not valid')
    return value


def generation_suffix(generation):
    if type(generation) is not int or not 0 < generation <= MAX_GENERATION:
        raise errors.InvalidArgument(f'generation {generation!r} is not '
                                     f'valid')
    return f'c{generation}'


def _escape(field):
    return field.replace('_', '+-')


def lv_name(domain, volume, lv_suffix):
    return (f'{PREFIX}{_escape(volsep_name(domain, "domain"))}+'
            f'{_escape(volsep_name(volume, "volume"))}+{suffix(lv_suffix)}')


def dm_name(vg, lv):
    return f'{vg.replace("-", "--")}-{lv.replace("-", "--")}'


def check_length(vg, domain, volume):
    """Refuse a volume whose longest LV name would not fit device-mapper."""
    longest = dm_name(vg, lv_name(domain, volume, LONGEST_SUFFIX))
    if len(longest) > DM_NAME_MAX:
        raise errors.InvalidArgument(
            f'{domain}:{volume} is too long a name for an LVM volume in VG '
            f'{vg} (its device-mapper names would exceed {DM_NAME_MAX} '
            f'bytes)')


_FIELD = r'((?:[A-Za-z0-9]|\+-)(?:[A-Za-z0-9.-]|\+-){0,63})'
_LV = re.compile(r'vs\+' + _FIELD + r'\+' + _FIELD + r'\+'
                 r'(c[1-9][0-9]{0,17}|w|t|e)\Z')


def parse_lv_name(name):
    """(domain, volume, suffix) of one of volsep's LV names, else None."""
    match = _LV.match(name)
    if not match:
        return None
    domain, volume = (f.replace('+-', '_') for f in match.group(1, 2))
    if not (VOLSEP_NAME.match(domain) and VOLSEP_NAME.match(volume)):
        return None
    if lv_name(domain, volume, match.group(3)) != name:
        return None
    return domain, volume, match.group(3)


class LvAddress:
    """One of volsep's LVs in a thin pool, parsed from the frontend's
    "VG/POOL/DOMAIN/VOLUME/SUFFIX" and checked field by field."""

    def __init__(self, text):
        if type(text) is not str or text.count('/') != 4:
            raise errors.InvalidArgument(
                f'LV address {text!r} is not VG/POOL/DOMAIN/VOLUME/SUFFIX')
        vg, pool, domain, volume, lv_suffix = text.split('/')
        self.vg = lvm_name(vg, 'volume group')
        self.pool = lvm_name(pool, 'thin pool')
        self.domain = volsep_name(domain, 'domain')
        self.volume = volsep_name(volume, 'volume')
        self.suffix = suffix(lv_suffix)
        check_length(self.vg, self.domain, self.volume)
        self.lv = lv_name(self.domain, self.volume, self.suffix)
        self.text = text

    def with_suffix(self, lv_suffix):
        return LvAddress(f'{self.vg}/{self.pool}/{self.domain}/'
                         f'{self.volume}/{lv_suffix}')

    @property
    def full(self):
        return f'{self.vg}/{self.lv}'

    @property
    def dm(self):
        return dm_name(self.vg, self.lv)


def lv_address(vg, pool, domain, volume, lv_suffix):
    """The frontend's side of LvAddress."""
    return f'{vg}/{pool}/{domain}/{volume}/{lv_suffix}'
