"""The frontend's one state document: pools, domains and volume settings.

Volume content and sizes live on disk and are never recorded here, so the
two cannot drift. The one exception is deliberate: a chain driver's record
of each backing chain, which `chain validate` compares with the images.
The document is XML, validated against a RelaxNG schema on every load and
before every save, and replaced atomically (temp file, fsync, rename, fsync
of the directory).
"""

import os
import tempfile

from lxml import etree

from volsep.drivers import errors

_SCHEMA = etree.RelaxNG(etree.fromstring(b'''
<element name="volsep" xmlns="http://relaxng.org/ns/structure/1.0"
         datatypeLibrary="http://www.w3.org/2001/XMLSchema-datatypes">
  <attribute name="version"><value>1</value></attribute>
  <optional><attribute name="default-pool"><text/></attribute></optional>
  <element name="pools">
    <zeroOrMore>
      <element name="pool">
        <attribute name="name"><text/></attribute>
        <attribute name="driver"><text/></attribute>
        <zeroOrMore>
          <element name="option">
            <attribute name="name"><text/></attribute>
            <text/>
          </element>
        </zeroOrMore>
      </element>
    </zeroOrMore>
  </element>
  <element name="domains">
    <zeroOrMore>
      <element name="domain">
        <attribute name="name"><text/></attribute>
        <attribute name="running"><data type="boolean"/></attribute>
        <zeroOrMore>
          <element name="volume">
            <attribute name="name"><text/></attribute>
            <attribute name="pool"><text/></attribute>
            <attribute name="kind">
              <choice><value>persistent</value><value>volatile</value>
                      <value>snapshot</value></choice>
            </attribute>
            <attribute name="size"><data type="nonNegativeInteger"/></attribute>
            <attribute name="rw"><data type="boolean"/></attribute>
            <attribute name="revisions-to-keep"><data type="integer"/></attribute>
            <optional><attribute name="source"><text/></attribute></optional>
            <optional><attribute name="format">
              <choice><value>raw</value><value>qcow2</value></choice>
            </attribute></optional>
            <zeroOrMore>
              <element name="layer">
                <attribute name="path"><text/></attribute>
                <attribute name="format">
                  <choice><value>raw</value><value>qcow2</value></choice>
                </attribute>
              </element>
            </zeroOrMore>
          </element>
        </zeroOrMore>
      </element>
    </zeroOrMore>
  </element>
</element>
'''))


class Snapshot:
    """Plain data read from or written to the document."""

    def __init__(self, pools=None, domains=None, default_pool=None):
        self.pools = pools or {}      # name -> (driver, {option: value})
        self.domains = domains or {}  # name -> (running, [volume dicts])
        self.default_pool = default_pool


def _to_xml(snapshot):
    root = etree.Element('volsep', version='1')
    if snapshot.default_pool:
        root.set('default-pool', snapshot.default_pool)
    pools = etree.SubElement(root, 'pools')
    for name, (driver, options) in sorted(snapshot.pools.items()):
        pool = etree.SubElement(pools, 'pool', name=name, driver=driver)
        for key, value in sorted(options.items()):
            etree.SubElement(pool, 'option', name=key).text = str(value)
    domains = etree.SubElement(root, 'domains')
    for name, (running, volumes) in sorted(snapshot.domains.items()):
        domain = etree.SubElement(domains, 'domain', name=name,
                                  running='true' if running else 'false')
        for vol in volumes:
            element = etree.SubElement(
                domain, 'volume', name=vol['name'], pool=vol['pool'],
                kind=vol['kind'], size=str(vol['size']),
                rw='true' if vol['rw'] else 'false')
            element.set('revisions-to-keep', str(vol['revisions_to_keep']))
            if vol.get('source'):
                element.set('source', vol['source'])
            element.set('format', vol.get('format', 'raw'))
            for path, fmt in vol.get('chain', ()):
                etree.SubElement(element, 'layer', path=path, format=fmt)
    return root


def _from_xml(root):
    snapshot = Snapshot(default_pool=root.get('default-pool'))
    for pool in root.find('pools'):
        snapshot.pools[pool.get('name')] = (
            pool.get('driver'),
            {opt.get('name'): opt.text or '' for opt in pool})
    for domain in root.find('domains'):
        volumes = [{'name': v.get('name'), 'pool': v.get('pool'),
                    'kind': v.get('kind'), 'size': int(v.get('size')),
                    'rw': v.get('rw') in ('true', '1'),
                    'revisions_to_keep': int(v.get('revisions-to-keep')),
                    'source': v.get('source'),
                    'format': v.get('format', 'raw'),
                    'chain': [[layer.get('path'), layer.get('format')]
                              for layer in v]} for v in domain]
        snapshot.domains[domain.get('name')] = (
            domain.get('running') in ('true', '1'), volumes)
    return snapshot


class StateDocument:
    def __init__(self, path):
        self.path = path

    def load(self):
        if not os.path.exists(self.path):
            return Snapshot()
        try:
            parser = etree.XMLParser(resolve_entities=False, no_network=True)
            root = etree.parse(self.path, parser).getroot()
        except etree.XMLSyntaxError as err:
            raise errors.StorageError(f'state {self.path} is not XML: {err}')
        if not _SCHEMA.validate(root):
            raise errors.StorageError(
                f'state {self.path} is invalid: {_SCHEMA.error_log.last_error}')
        return _from_xml(root)

    def save(self, snapshot):
        root = _to_xml(snapshot)
        if not _SCHEMA.validate(root):  # a bug here must never reach disk
            raise errors.StorageError(
                f'refusing to save invalid state: '
                f'{_SCHEMA.error_log.last_error}')
        data = etree.tostring(root, xml_declaration=True, encoding='utf-8',
                              pretty_print=True)
        directory = os.path.dirname(self.path) or '.'
        fd, tmp = tempfile.mkstemp(prefix='.state-', dir=directory)
        try:
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            fd = None
            os.rename(tmp, self.path)
        finally:
            if fd is not None:
                os.close(fd)
            if os.path.exists(tmp):
                os.unlink(tmp)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
