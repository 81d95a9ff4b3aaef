"""libvirt XML for volsep's storage, built with lxml: a domain's <disk>
elements with their full nested <backingStore> chains, and <pool> and
<volume> descriptions in the shape `virsh pool-dumpxml` and
`virsh vol-dumpxml` print.

A level of a chain is [source, format]. The source is a path (a file), or a
dict for the other kinds libvirt knows: {"type": "block", "dev": PATH} or
{"type": "network", "protocol": "rbd", "name": "POOL/IMAGE",
"hosts": [[HOST, PORT], ...]}. volsep's drivers store files today; the
others are for drivers on block devices and Ceph."""

from lxml import etree

_TARGETS = 'abcdefghijklmnopqrstuvwxyz'


def target_name(index):
    if index >= len(_TARGETS):
        raise ValueError('more than 26 disks')
    return f'vd{_TARGETS[index]}'


def _kind(source):
    return 'file' if isinstance(source, str) else source['type']


def _source(parent, source):
    kind = _kind(source)
    if kind == 'file':
        etree.SubElement(parent, 'source', file=source)
    elif kind == 'block':
        etree.SubElement(parent, 'source', dev=source['dev'])
    elif kind == 'network':
        element = etree.SubElement(parent, 'source',
                                   protocol=source['protocol'],
                                   name=source['name'])
        for host, port in source.get('hosts', ()):
            etree.SubElement(element, 'host', name=host, port=str(port))
        if source.get('auth'):
            # The key stays in libvirt's secret store; only its UUID here.
            auth = etree.SubElement(element, 'auth',
                                    username=source['auth']['username'])
            etree.SubElement(auth, 'secret', type='ceph',
                             uuid=source['auth']['secret_uuid'])
    else:
        raise ValueError(f'unknown source type {kind!r}')


def disk(chain, target, read_only=False):
    """``chain``: [[source, format], ...], the attached image first. Every
    level below it is a <backingStore> with its <format>; an empty
    <backingStore/> says the chain ends there."""
    (top, top_format), below = chain[0], chain[1:]
    element = etree.Element('disk', type=_kind(top), device='disk')
    etree.SubElement(element, 'driver', name='qemu', type=top_format)
    _source(element, top)
    parent = element
    for source, fmt in below:
        parent = etree.SubElement(parent, 'backingStore', type=_kind(source))
        etree.SubElement(parent, 'format', type=fmt)
        _source(parent, source)
    etree.SubElement(parent, 'backingStore')
    etree.SubElement(element, 'target', dev=target, bus='virtio')
    if read_only:
        etree.SubElement(element, 'readonly')
    return element


def domain(name, disks):
    """A minimal TCG domain holding ``disks``; enough to define and start."""
    element = etree.Element('domain', type='qemu')
    etree.SubElement(element, 'name').text = name
    etree.SubElement(element, 'memory', unit='MiB').text = '64'
    etree.SubElement(element, 'vcpu').text = '1'
    os_element = etree.SubElement(element, 'os')
    etree.SubElement(os_element, 'type', arch='x86_64',
                     machine='pc').text = 'hvm'
    devices = etree.SubElement(element, 'devices')
    devices.extend(disks)
    return element


def storage_pool(name, path, capacity, available):
    element = etree.Element('pool', type='dir')
    etree.SubElement(element, 'name').text = name
    for tag, value in (('capacity', capacity),
                       ('allocation', capacity - available),
                       ('available', available)):
        etree.SubElement(element, tag, unit='bytes').text = str(value)
    target = etree.SubElement(element, 'target')
    etree.SubElement(target, 'path').text = path
    return element


def storage_volume(name, chain, capacity, allocation):
    """A volume as vol-dumpxml shows it: its own file and format, and its
    direct backing store (libvirt's volume XML has one level)."""
    (path, fmt), below = chain[0], chain[1:]
    element = etree.Element('volume', type='file')
    etree.SubElement(element, 'name').text = name
    etree.SubElement(element, 'key').text = path
    etree.SubElement(element, 'capacity', unit='bytes').text = str(capacity)
    etree.SubElement(element, 'allocation',
                     unit='bytes').text = str(allocation)
    target = etree.SubElement(element, 'target')
    etree.SubElement(target, 'path').text = path
    etree.SubElement(target, 'format', type=fmt)
    if below:
        backing = etree.SubElement(element, 'backingStore')
        etree.SubElement(backing, 'path').text = below[0][0]
        etree.SubElement(backing, 'format', type=below[0][1])
    return element


def text(*elements):
    return ''.join(etree.tostring(e, pretty_print=True, encoding='unicode')
                   for e in elements)
