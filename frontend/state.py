"""The frontend's state, one small document per thing that changes on its
own, so that starting or stopping one domain never rewrites another's.

    STATE/pools.xml          pools, their options and the default pool
    STATE/domains/NAME.xml   one domain's volume settings and chain records
    STATE/running/NAME       present while the domain runs: 'running', or
                             'stopping' once a stop has begun

Volume content and sizes live on disk and are never recorded here, so the
two cannot drift. The one exception is deliberate: a chain driver's record
of each backing chain, which `chain validate` compares with the images.
Documents are XML, validated against a RelaxNG schema on every load and
before every save, and replaced atomically (temporary file, fsync, rename,
fsync of the directory); a document whose bytes would not change is not
written. Temporary files a crash left behind are removed at load. A state
of the earlier single-document layout (STATE/state.xml) is converted at
load, the old file removed only once the new documents are durable.
"""

import os
import tempfile
import threading

from lxml import etree

from volsep.drivers import errors

_VOLUME = '''
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
  </element>'''

_POOL = '''
  <element name="pool">
    <attribute name="name"><text/></attribute>
    <attribute name="driver"><text/></attribute>
    <zeroOrMore>
      <element name="option">
        <attribute name="name"><text/></attribute>
        <text/>
      </element>
    </zeroOrMore>
  </element>'''

_NS = ('xmlns="http://relaxng.org/ns/structure/1.0" '
       'datatypeLibrary="http://www.w3.org/2001/XMLSchema-datatypes"')


def _schema(text):
    return etree.RelaxNG(etree.fromstring(text.encode()))


POOLS_SCHEMA = _schema(f'''
<element name="pools" {_NS}>
  <attribute name="version"><value>2</value></attribute>
  <optional><attribute name="default-pool"><text/></attribute></optional>
  <zeroOrMore>{_POOL}</zeroOrMore>
</element>''')

DOMAIN_SCHEMA = _schema(f'''
<element name="domain" {_NS}>
  <attribute name="version"><value>2</value></attribute>
  <attribute name="name"><text/></attribute>
  <zeroOrMore>{_VOLUME}</zeroOrMore>
</element>''')

# The single document of the first layout, read only to convert it.
_LEGACY_SCHEMA = _schema(f'''
<element name="volsep" {_NS}>
  <attribute name="version"><value>1</value></attribute>
  <optional><attribute name="default-pool"><text/></attribute></optional>
  <element name="pools"><zeroOrMore>{_POOL}</zeroOrMore></element>
  <element name="domains">
    <zeroOrMore>
      <element name="domain">
        <attribute name="name"><text/></attribute>
        <attribute name="running"><data type="boolean"/></attribute>
        <zeroOrMore>{_VOLUME}</zeroOrMore>
      </element>
    </zeroOrMore>
  </element>
</element>''')

RUNNING, STOPPING = 'running', 'stopping'
_TEMPORARY = ('.tmp-', '.state-')   # .state-: the first layout's


class Snapshot:
    """Plain data read from the documents."""

    def __init__(self, pools=None, domains=None, default_pool=None,
                 marks=None):
        self.pools = pools or {}      # name -> (driver, {option: value})
        self.domains = domains or {}  # name -> [volume dicts]
        self.default_pool = default_pool
        self.marks = marks or {}      # domain name -> RUNNING or STOPPING


# -- XML ------------------------------------------------------------------

def _pools_xml(pools, default_pool):
    root = etree.Element('pools', version='2')
    if default_pool:
        root.set('default-pool', default_pool)
    for name, (driver, options) in sorted(pools.items()):
        pool = etree.SubElement(root, 'pool', name=name, driver=driver)
        for key, value in sorted(options.items()):
            etree.SubElement(pool, 'option', name=key).text = str(value)
    return root


def _add_volume(parent, vol):
    element = etree.SubElement(
        parent, 'volume', name=vol['name'], pool=vol['pool'],
        kind=vol['kind'], size=str(vol['size']),
        rw='true' if vol['rw'] else 'false')
    element.set('revisions-to-keep', str(vol['revisions_to_keep']))
    if vol.get('source'):
        element.set('source', vol['source'])
    element.set('format', vol.get('format', 'raw'))
    for path, fmt in vol.get('chain', ()):
        etree.SubElement(element, 'layer', path=path, format=fmt)


def _domain_xml(name, volumes):
    root = etree.Element('domain', version='2', name=name)
    for vol in volumes:
        _add_volume(root, vol)
    return root


def _read_pools(root):
    pools = {pool.get('name'): (pool.get('driver'),
                                {opt.get('name'): opt.text or ''
                                 for opt in pool})
             for pool in root.iter('pool')}
    return pools, root.get('default-pool')


def _read_volumes(domain):
    return [{'name': v.get('name'), 'pool': v.get('pool'),
             'kind': v.get('kind'), 'size': int(v.get('size')),
             'rw': v.get('rw') in ('true', '1'),
             'revisions_to_keep': int(v.get('revisions-to-keep')),
             'source': v.get('source'), 'format': v.get('format', 'raw'),
             'chain': [[layer.get('path'), layer.get('format')]
                       for layer in v]}
            for v in domain.iter('volume')]


def _serialise(root, schema, what):
    if not schema.validate(root):  # a bug here must never reach disk
        raise errors.StorageError(f'refusing to save invalid {what}: '
                                  f'{schema.error_log.last_error}')
    return etree.tostring(root, xml_declaration=True, encoding='utf-8',
                          pretty_print=True)


def _parse(path, schema):
    try:
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        root = etree.parse(path, parser).getroot()
    except etree.XMLSyntaxError as err:
        raise errors.StorageError(f'state {path} is not XML: {err}')
    if not schema.validate(root):
        raise errors.StorageError(
            f'state {path} is invalid: {schema.error_log.last_error}')
    return root


# -- files ----------------------------------------------------------------

def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path, data, durable=True):
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', dir=directory)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
        os.close(fd)
        fd = None
        os.rename(tmp, path)
    finally:
        if fd is not None:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
    if durable:
        _fsync_directory(directory)


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    _fsync_directory(os.path.dirname(path))


class StateStore:
    def __init__(self, directory):
        self.directory = directory
        self.pools_path = os.path.join(directory, 'pools.xml')
        self.domains_dir = os.path.join(directory, 'domains')
        self.running_dir = os.path.join(directory, 'running')
        self._legacy = os.path.join(directory, 'state.xml')
        # The bytes last written per document, and one lock per document
        # (two volumes of one domain may save it at once; other domains
        # never wait).
        self._written = {}
        self._locks = {}
        self._locks_lock = threading.Lock()

    def _lock(self, key):
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    def _domain_path(self, name):
        return os.path.join(self.domains_dir, f'{name}.xml')

    def _running_path(self, name):
        return os.path.join(self.running_dir, name)

    # -- load ---------------------------------------------------------------

    def load(self):
        for directory in (self.domains_dir, self.running_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self.removed_temporaries = self._remove_temporaries()
        if os.path.exists(self._legacy):
            self._convert_legacy()
        snapshot = Snapshot()
        if os.path.exists(self.pools_path):
            snapshot.pools, snapshot.default_pool = _read_pools(
                _parse(self.pools_path, POOLS_SCHEMA))
        for entry in sorted(os.listdir(self.domains_dir)):
            if not entry.endswith('.xml'):
                continue
            path = os.path.join(self.domains_dir, entry)
            root = _parse(path, DOMAIN_SCHEMA)
            if f'{root.get("name")}.xml' != entry:
                raise errors.StorageError(
                    f'state {path} describes domain {root.get("name")!r}')
            snapshot.domains[root.get('name')] = _read_volumes(root)
        for name in sorted(os.listdir(self.running_dir)):
            with open(self._running_path(name)) as f:
                mark = f.read().strip()
            if name not in snapshot.domains:
                self.mark_stopped(name)   # its domain's record is gone
                continue
            # A mark whose write a crash cut short is a stop begun.
            snapshot.marks[name] = RUNNING if mark == RUNNING else STOPPING
        return snapshot

    def _remove_temporaries(self):
        removed = []
        for directory in (self.directory, self.domains_dir,
                          self.running_dir):
            for entry in os.listdir(directory):
                if entry.startswith(_TEMPORARY):
                    os.unlink(os.path.join(directory, entry))
                    removed.append(os.path.join(directory, entry))
        return removed

    def _convert_legacy(self):
        """Write the new documents (one sync for all, not one per file:
        thousands of domains convert in seconds), then drop the old one; a
        crash before that converts again from it."""
        root = _parse(self._legacy, _LEGACY_SCHEMA)
        pools, _ = _read_pools(root.find('pools'))
        default_pool = root.get('default-pool')
        _replace(self.pools_path, _serialise(
            _pools_xml(pools, default_pool), POOLS_SCHEMA, 'pools'), False)
        for domain in root.find('domains'):
            name = domain.get('name')
            _replace(self._domain_path(name), _serialise(
                _domain_xml(name, _read_volumes(domain)), DOMAIN_SCHEMA,
                f'domain {name}'), False)
            running = self._running_path(name)
            if domain.get('running') in ('true', '1'):
                with open(running, 'w') as f:
                    f.write(f'{RUNNING}\n')
            elif os.path.exists(running):
                os.unlink(running)
        os.sync()
        _remove(self._legacy)

    # -- save ---------------------------------------------------------------

    def _save(self, key, path, data):
        with self._lock(key):
            if self._written.get(key) == data:
                return
            _replace(path, data)
            self._written[key] = data

    def save_pools(self, pools, default_pool):
        self._save(None, self.pools_path, _serialise(
            _pools_xml(pools, default_pool), POOLS_SCHEMA, 'pools'))

    def save_domain(self, name, volumes):
        """Write domain ``name``'s volumes; none left removes its
        document."""
        if not volumes:
            with self._lock(name):
                _remove(self._domain_path(name))
                self._written.pop(name, None)
            return
        self._save(name, self._domain_path(name), _serialise(
            _domain_xml(name, volumes), DOMAIN_SCHEMA, f'domain {name}'))

    # -- running marks --------------------------------------------------------

    # Marks are not flushed: a killed service leaves them in the page
    # cache, which is what start-up reads. Only a host crash can lose one,
    # and it loses the guest with it: a lost 'running' makes start-up stop
    # the domain (commit or discard, as a stop after the crash would), and a
    # lost 'stopping' is recognised from the disk itself, as a running
    # domain with a working copy gone (Manager.reconcile). So starting and
    # stopping cost no flush beyond the volumes' own.

    def mark_running(self, name):
        fd = os.open(self._running_path(name), os.O_WRONLY | os.O_CREAT |
                     os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f'{RUNNING}\n'.encode())
        finally:
            os.close(fd)

    def mark_stopping(self, name):
        """Before a stop touches a volume: a kill from here on leaves a
        stop that start-up finishes, never a domain recorded as running
        whose working copies are partly gone."""
        fd = os.open(self._running_path(name), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, f'{STOPPING}\n'.encode(), 0)
        finally:
            os.close(fd)

    def mark_stopped(self, name):
        # If a crash brings the mark back, it says 'stopping', and start-up
        # stops the domain again, which changes nothing.
        try:
            os.unlink(self._running_path(name))
        except FileNotFoundError:
            pass
