"""The driver interface: pools and volumes, capabilities as data.

A driver subclasses Pool and Volume and overrides only what it can do; the
base answers everything else with NotSupported. Drivers are found through
the `volsep.drivers` entry-point group, so a third party can ship one; it
declares the API_VERSION it was written for.
"""

import dataclasses

from volsep.drivers import errors
from volsep.drivers import validation

API_VERSION = 1
KINDS = ('persistent', 'volatile', 'snapshot')


@dataclasses.dataclass(frozen=True)
class Capabilities:
    kinds: frozenset = frozenset(KINDS)
    revert: bool = False
    resize_running: bool = False
    clone_instant: bool = False
    export_formats: tuple = ('raw',)
    import_formats: tuple = ('raw',)
    volume_formats: tuple = ('raw',)
    chains: bool = False
    # Raw imports and exports can take the caller's descriptor.
    descriptors: bool = False
    # revisions_to_keep=-1: the VM writes the committed image itself.
    in_place: bool = True

    def as_dict(self):
        return {'kinds': sorted(self.kinds), 'revert': self.revert,
                'resize_running': self.resize_running,
                'clone_instant': self.clone_instant,
                'export_formats': list(self.export_formats),
                'import_formats': list(self.import_formats),
                'volume_formats': list(self.volume_formats),
                'chains': self.chains, 'descriptors': self.descriptors}


@dataclasses.dataclass(frozen=True)
class Option:
    help: str
    required: bool = False
    default: object = None
    parse: object = str


@dataclasses.dataclass
class VolumeConfig:
    """What the frontend records about a volume; content lives on disk."""
    domain: str
    name: str
    pool: str
    kind: str = 'persistent'
    size: int = 0
    rw: bool = True
    revisions_to_keep: int = 1
    source: object = None  # the source volume's VolumeConfig, if any
    format: str = 'raw'    # of the committed image (a chain's base)
    # A chain driver's record of the committed backing chain: [path
    # relative to the pool, format] pairs, top first.
    chain: list = dataclasses.field(default_factory=list)

    @property
    def vid(self):
        return f'{self.domain}/{self.name}'

    @property
    def address(self):
        return f'{self.domain}:{self.name}'


def _not_supported(what):
    def method(self, *args, **kwargs):
        driver = getattr(self, 'pool', self).driver
        raise errors.NotSupported(f'driver {driver} does not support {what}')
    method.__name__ = what
    return method


class Volume:
    """One volume of a pool; every operation runs with the volume locked
    by the frontend.

    verify() checks that the volume can start and returns what it read of
    the volume's own storage, or None; the frontend hands that to
    start(verified) when nothing has changed the volume in between, else
    start(None), and start reads afresh.

    A driver that knows what its start() or stop() left in the volume's
    storage without reading it sets ``left`` to that; the frontend hands
    it to the next verify(known) or stop(known) of the volume while no
    lock holder has changed the volume in between, which then need not
    read it either (a driver may ignore ``known``)."""

    left = None

    def __init__(self, pool, config):
        self.pool = pool
        self.config = config

    def attached_format(self):
        """The format of the image start() hands to the hypervisor."""
        return self.config.format

    def direct_export_size(self):
        """The size of a raw export that export_committed writes straight
        from the committed image, or None: exports go through
        export_begin's private snapshot."""
        return None

    def chain(self):
        """The image a hypervisor attaches and its backing chain: [[absolute
        path, format], ...], top first."""
        return [[self.state()['path'], self.attached_format()]]

    create = _not_supported('create')
    remove = _not_supported('remove')
    start = _not_supported('start')
    stop = _not_supported('stop')
    verify = _not_supported('verify')
    revisions = _not_supported('revisions')
    revert = _not_supported('revert')
    resize = _not_supported('resize')
    import_begin = _not_supported('import')
    import_write = _not_supported('import')
    import_end = _not_supported('import')
    import_descriptor = _not_supported('import')
    import_from = _not_supported('clone')
    export_begin = _not_supported('export')
    export_read = _not_supported('export')
    export_end = _not_supported('export')
    export_descriptor = _not_supported('export')
    export_committed = _not_supported('export')
    clear = _not_supported('clear')
    tidy = _not_supported('tidy')
    needs_attention = _not_supported('reconciliation')
    state = _not_supported('state')


class Pool:
    driver = None
    api_version = API_VERSION
    capabilities = Capabilities()
    options = {
        'revisions_to_keep': Option('default revisions_to_keep of new '
                                    'volumes', default=1,
                                    parse=validation.revisions_to_keep),
        'max_volume_size': Option(
            'largest volume size (bytes, or with a unit: 10G)',
            default=validation.MAX_SIZE,
            parse=lambda v: validation.size_with_units(v, 'max_volume_size')),
    }
    volume_class = Volume

    def __init__(self, name, options):
        self.name = name
        self.options = self.parse_options(options)

    @classmethod
    def parse_options(cls, given):
        unknown = sorted(set(given) - set(cls.options))
        if unknown:
            raise errors.InvalidArgument(
                f'driver {cls.driver} has no option(s) {", ".join(unknown)}'
                f'; it takes {", ".join(sorted(cls.options))}')
        parsed = {}
        for key, option in cls.options.items():
            if key in given:
                parsed[key] = option.parse(given[key])
            elif option.required:
                raise errors.InvalidArgument(
                    f'driver {cls.driver} needs option {key}')
            else:
                parsed[key] = option.default
        return parsed

    @classmethod
    def describe(cls):
        return {'driver': cls.driver, 'api_version': cls.api_version,
                'options': {k: o.help for k, o in cls.options.items()},
                'capabilities': cls.capabilities.as_dict()}

    def volume(self, config):
        return self.volume_class(self, config)

    def takes_descriptors(self):
        """Whether imports and exports can take the caller's descriptor
        now."""
        return self.capabilities.descriptors

    def copy_method(self):
        """How this pool copies data for snapshots, commits and clones:
        'reflink' (shared extents) or 'copy' (a full sparse copy)."""
        return 'copy'

    setup = _not_supported('pool setup')
    destroy = _not_supported('pool removal')
    usage = _not_supported('pool usage')
    listings = _not_supported('pool scan')
