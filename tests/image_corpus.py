"""A corpus of hostile and benign disk images, crafted here and now.

Nothing is downloaded: every file is made with qemu-img and then patched
byte by byte (struct), as an attacker would. Each case names the format it
is declared as on import; a hostile case must be refused with UnsafeImage
before qemu-img opens it, a benign one must round-trip exactly.
"""

import dataclasses
import struct
import subprocess

MiB = 1 << 20
# Read by qemu-img if any hostile case got through: its bytes must never
# appear in a pool.
HOST_FILE = '/etc/passwd'

_QCOW2_INCOMPATIBLE = 72
_QCOW2_HEADER_LENGTH = 100
_QCOW2_DATA_FILE_EXTENSION = 0x44415441


@dataclasses.dataclass
class Case:
    name: str
    declared: str
    make: object          # make(directory) -> path of the crafted file
    hostile: bool = True


def qemu_img(*args):
    subprocess.run(['qemu-img', *args], check=True, capture_output=True)


def _patch(path, offset, data):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(data)


def _read(path, offset, length):
    with open(path, 'rb') as f:
        f.seek(offset)
        return f.read(length)


def pattern_raw(path, size=8 * MiB):
    """Raw data with recognisable content in a few places and holes
    elsewhere."""
    with open(path, 'wb') as f:
        f.truncate(size)
        for i, offset in enumerate((0, MiB + 512, size - 4096)):
            f.seek(offset)
            f.write(f'volsep block {i} '.encode() * 200)
    return path


def empty_qcow2(directory):
    return _qcow2(directory, 'empty.qcow2')


def _qcow2(directory, name, size='16M'):
    path = f'{directory}/{name}'
    qemu_img('create', '-q', '-f', 'qcow2', path, size)
    return path


def _qcow2_extensions(path, extensions, backing=None):
    """Replace the header extensions of a fresh qcow2 with ``extensions``
    [(type, bytes)], and put a backing file name after them."""
    (header_length,) = struct.unpack('>I', _read(path, _QCOW2_HEADER_LENGTH,
                                                 4))
    blob = b''
    for kind, data in extensions:
        padded = data + b'\0' * (-len(data) % 8)
        blob += struct.pack('>II', kind, len(data)) + padded
    blob += struct.pack('>II', 0, 0)
    backing_offset = header_length + len(blob)
    _patch(path, header_length, blob + (backing or b''))
    if backing:
        _patch(path, 8, struct.pack('>QI', backing_offset, len(backing)))


# -- hostile cases ---------------------------------------------------------
# The ones in LEAKS copy HOST_FILE into their output when bare qemu-img
# converts them (a test proves it), so refusing them is what keeps the
# host's bytes out of the pools.

def qcow2_backing_host_file(directory):
    path = _qcow2(directory, 'backing.qcow2')
    _qcow2_extensions(path, [], backing=HOST_FILE.encode())
    return path


def qcow2_data_file_host_file(directory):
    """Made by qemu-img with a raw external data file, every cluster mapped
    onto it, then the data file's name pointed at a host file."""
    path = f'{directory}/datafile.qcow2'
    qemu_img('create', '-q', '-f', 'qcow2', '-o',
             f'data_file={directory}/data.raw,data_file_raw=on,'
             f'preallocation=metadata', path, '16M')
    _qcow2_extensions(path, [(_QCOW2_DATA_FILE_EXTENSION,
                              HOST_FILE.encode())])
    return path


def qcow2_unknown_incompatible_feature(directory):
    path = _qcow2(directory, 'feature.qcow2')
    _patch(path, _QCOW2_INCOMPATIBLE, struct.pack('>Q', 1 << 40))
    return path


def qcow2_huge_l1_table(directory):
    path = _qcow2(directory, 'l1.qcow2')
    _patch(path, 36, struct.pack('>I', 0x08000000))    # 1 GiB of L1
    return path


def qcow2_huge_refcount_table(directory):
    path = _qcow2(directory, 'refcount.qcow2')
    _patch(path, 56, struct.pack('>I', 0x00100000))    # 64 GiB of table
    return path


def qcow2_encrypted(directory):
    path = _qcow2(directory, 'aes.qcow2')
    _patch(path, 32, struct.pack('>I', 1))             # legacy AES
    return path


def qcow2_beyond_pool_limit(directory):
    return _qcow2(directory, 'big.qcow2', '2G')


def qcow2_beyond_any_limit(directory):
    path = _qcow2(directory, 'enormous.qcow2')
    _patch(path, 24, struct.pack('>Q', 1 << 62))
    return path


def qcow2_truncated_header(directory):
    source = _qcow2(directory, 'whole.qcow2')
    path = f'{directory}/truncated.qcow2'
    with open(path, 'wb') as f:
        f.write(_read(source, 0, 48))
    return path


def zero_length(directory):
    path = f'{directory}/empty.img'
    open(path, 'wb').close()
    return path


def qcow2_that_is_also_iso(directory):
    path = _qcow2(directory, 'iso.qcow2')
    _patch(path, 32 * 1024, b'\x01CD001\x01')
    return path


def luks_header(directory):
    path = f'{directory}/luks.img'
    header = struct.pack('>6sH32s32s32sII20s32sI', b'LUKS\xba\xbe', 1,
                         b'aes', b'xts-plain64', b'sha256', 4096, 64,
                         b'\x11' * 20, b'\x22' * 32, 1000)
    with open(path, 'wb') as f:
        f.write(header.ljust(592, b'\0'))
        f.truncate(4 * MiB)
    return path


def vmdk_flat_extent_host_file(directory):
    """A text VMDK descriptor whose extent is a host file."""
    path = f'{directory}/descriptor.vmdk'
    with open(path, 'w') as f:
        f.write('# Disk DescriptorFile\nversion=1\nCID=12345678\n'
                'parentCID=ffffffff\ncreateType="monolithicFlat"\n'
                f'RW 2048 FLAT "{HOST_FILE}" 0\n')
    return path


def vmdk_sparse_with_host_extent(directory):
    """A real monolithicSparse file whose embedded descriptor was edited to
    name a host file as its extent."""
    path = f'{directory}/edited.vmdk'
    qemu_img('create', '-q', '-f', 'vmdk', path, '16M')
    descriptor = _read(path, 512, 1024)
    old = descriptor[descriptor.index(b'RW '):]
    old = old[:old.index(b'\n')]
    new = f'RW 32768 FLAT "{HOST_FILE}" 0'.encode()
    assert len(new) <= len(old) + 64
    edited = descriptor.replace(old, new)
    _patch(path, 512, edited[:1024].ljust(1024, b'\0'))
    return path


def vmdk_monolithic_flat(directory):
    path = f'{directory}/flat.vmdk'
    qemu_img('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat',
             path, '16M')
    return path


def raw_with_qcow2_header(directory):
    """A guest disk whose first bytes are a whole qcow2 image naming a host
    file as backing: a leak if probed, harmless bytes if read as raw."""
    header = qcow2_backing_host_file(directory)
    path = f'{directory}/guest.raw'
    with open(header, 'rb') as src, open(path, 'wb') as dst:
        dst.write(src.read())
        dst.seek(MiB)
        dst.write(b'ordinary guest data ' * 1000)
        dst.truncate(4 * MiB)
    return path


def converted(directory, fmt, qemu_fmt=None, options=()):
    """A benign image: pattern_raw converted by qemu-img itself."""
    raw = pattern_raw(f'{directory}/source-{fmt}.raw')
    path = f'{directory}/benign.{fmt}'
    qemu_img('convert', '-f', 'raw', '-O', qemu_fmt or fmt, *options, raw,
             path)
    return path


def _as(fmt, qemu_fmt=None):
    return lambda directory: converted(directory, fmt, qemu_fmt)


HOSTILE = [
    Case('qcow2-backing-host-file', 'qcow2', qcow2_backing_host_file),
    Case('qcow2-data-file-host-file', 'qcow2', qcow2_data_file_host_file),
    Case('qcow2-unknown-feature', 'qcow2', qcow2_unknown_incompatible_feature),
    Case('qcow2-huge-l1', 'qcow2', qcow2_huge_l1_table),
    Case('qcow2-huge-refcount', 'qcow2', qcow2_huge_refcount_table),
    Case('qcow2-encrypted', 'qcow2', qcow2_encrypted),
    Case('qcow2-beyond-any-limit', 'qcow2', qcow2_beyond_any_limit),
    Case('qcow2-truncated-header', 'qcow2', qcow2_truncated_header),
    Case('zero-length-as-qcow2', 'qcow2', zero_length),
    Case('zero-length-as-vmdk', 'vmdk', zero_length),
    Case('qcow2-and-iso', 'qcow2', qcow2_that_is_also_iso),
    Case('luks-as-qcow2', 'qcow2', luks_header),
    Case('luks-as-vdi', 'vdi', luks_header),
    Case('vmdk-descriptor-host-extent', 'vmdk', vmdk_flat_extent_host_file),
    Case('vmdk-sparse-host-extent', 'vmdk', vmdk_sparse_with_host_extent),
    Case('vmdk-monolithic-flat', 'vmdk', vmdk_monolithic_flat),
    Case('raw-with-qcow2-header-as-qcow2', 'qcow2', raw_with_qcow2_header),
    Case('qcow2-declared-vmdk', 'vmdk', _as('qcow2')),
    Case('vmdk-declared-qcow2', 'qcow2', _as('vmdk')),
    Case('vhd-declared-vhdx', 'vhdx', _as('vhd', 'vpc')),
    Case('vhdx-declared-vhd', 'vhd', _as('vhdx')),
    Case('raw-declared-qcow2', 'qcow2',
         lambda d: pattern_raw(f'{d}/plain.raw')),
]

LEAKS = ('qcow2-backing-host-file', 'qcow2-data-file-host-file',
         'vmdk-descriptor-host-extent', 'raw-with-qcow2-header-as-qcow2')

# Refused only against a pool whose max_volume_size is below 2 GiB.
BEYOND_POOL_LIMIT = Case('qcow2-beyond-pool-limit', 'qcow2',
                         qcow2_beyond_pool_limit)


def _benign(name, fmt, qemu_fmt=None, options=()):
    return Case(name, fmt, lambda d: converted(d, fmt, qemu_fmt, options),
                hostile=False)


BENIGN = [
    _benign('qcow2', 'qcow2'),
    _benign('qcow2-compressed', 'qcow2', options=('-c',)),
    _benign('vmdk-monolithic-sparse', 'vmdk'),
    _benign('vmdk-stream-optimized', 'vmdk',
            options=('-o', 'subformat=streamOptimized')),
    _benign('vhd', 'vhd', 'vpc'),
    _benign('vhdx', 'vhdx'),
    _benign('vdi', 'vdi'),
    Case('raw-with-qcow2-header-as-raw', 'raw', raw_with_qcow2_header,
         hostile=False),
]


def qemu_format(declared):
    return {'vhd': 'vpc'}.get(declared, declared)


def host_bytes_in(data):
    """Whether ``data`` holds the start of the host file's content."""
    with open(HOST_FILE, 'rb') as f:
        probe = f.read(64)
    return probe in data


def file_bytes(path):
    with open(path, 'rb') as f:
        return f.read()
