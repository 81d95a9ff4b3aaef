"""The root side's own configuration: where pools may live, where to audit.

It is read by the privileged daemon from a file that must belong to the
daemon's user and be writable by nobody else, so a compromised frontend can
neither pass an allow-list in a call nor edit the one on disk. The path comes
from the daemon's own environment (inherited at fork time from the process
that was still root, or reset by sudo for the helper start method).
"""

import dataclasses
import os
import stat
import threading

from oslo_config import cfg

from volsep.privileged import errors

CONFIG_ENV = 'VOLSEP_PRIVILEGED_CONFIG'
DEFAULT_CONFIG_PATH = '/etc/volsep/privileged.conf'

_OPTS = [
    cfg.ListOpt('allowed_roots', default=[],
                help='Absolute directories below which pool files may live.'),
    cfg.StrOpt('audit_log', default='/var/log/volsep/audit.log',
               help='Hash-chained JSON-lines audit log written by the root '
                    'side.'),
    cfg.IntOpt('qemu_img_cpu_seconds', default=30, min=1,
               help='RLIMIT_CPU for every qemu-img child.'),
    cfg.IntOpt('qemu_img_address_space_mib', default=2048, min=16,
               help='RLIMIT_AS for every qemu-img child.'),
    cfg.IntOpt('qemu_img_wall_seconds', default=3600, min=1,
               help='Wall-clock limit for every qemu-img child: one that '
                    'blocks (on a socket, say) is killed, so it can never '
                    'hold a root daemon thread or its files for good.'),
    cfg.ListOpt('ceph_pools', default=[],
                help='Ceph pools whose volsep images the root side may '
                     'touch (the rbd driver); empty: none.'),
    cfg.StrOpt('ceph_conf', default='/etc/ceph/ceph.conf',
               help='ceph.conf the root side connects with; it names the '
                    'monitors and the client\'s keyring (root-only).'),
    cfg.StrOpt('ceph_client', default='volsep',
               help='Ceph client id (client.ID) of the root side.'),
    cfg.ListOpt('allowed_thin_pools', default=[],
                help='LVM thin pools (VG/POOL) in which the root side may '
                     'create, rename, resize, activate and remove volsep\'s '
                     'thin LVs (the lvm_thin driver); empty: none.'),
    cfg.StrOpt('lvm_command', default='/sbin/lvm',
               help='Absolute path of the lvm tool the root side runs.'),
    cfg.BoolOpt('lvm_udev', default=True,
                help='Whether udev makes the device nodes of activated LVs; '
                     'false on hosts without a running udev (LVM then '
                     'makes them itself).'),
    cfg.StrOpt('lvm_extra_config', default='',
               help='Extra LVM configuration passed to every lvm command '
                    'with --config (for example backup/backup=0 on a host '
                    'whose /etc/lvm is read-only).'),
    cfg.IntOpt('lvm_command_seconds', default=300, min=1,
               help='Wall-clock limit of one lvm command: one that hangs '
                    '(a suspended device, say) is killed, so it cannot hold '
                    'a root daemon thread for good.'),
]


@dataclasses.dataclass(frozen=True)
class LvmConfig:
    thin_pools: tuple = ()
    command: str = '/sbin/lvm'
    udev: bool = True
    extra_config: str = ''
    command_seconds: int = 300


class RootConfig:
    def __init__(self, allowed_roots, audit_log, cpu_seconds, as_bytes,
                 wall_seconds, ceph=None, lvm=None):
        self.allowed_roots = allowed_roots
        self.audit_log = audit_log
        self.qemu_img_cpu_seconds = cpu_seconds
        self.qemu_img_address_space = as_bytes
        self.qemu_img_wall_seconds = wall_seconds
        # (pools, conf path, client id) for the rbd entrypoints.
        self.ceph = ceph or ((), None, None)
        self.lvm = lvm or LvmConfig()


_lock = threading.Lock()
_loaded = None


def config_path():
    return os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_PATH)


def _check_trusted(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise errors.ConfigurationError(
            f'privileged configuration {path} does not exist')
    if st.st_uid != os.geteuid():
        raise errors.ConfigurationError(
            f'privileged configuration {path} must be owned by uid '
            f'{os.geteuid()}, not {st.st_uid}')
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise errors.ConfigurationError(
            f'privileged configuration {path} is writable by group or others')


def _normalise_roots(roots):
    result = []
    for root in roots:
        if not os.path.isabs(root):
            raise errors.ConfigurationError(
                f'allowed root {root!r} is not an absolute path')
        result.append(os.path.normpath(root))
    return tuple(result)


def load():
    """Return the root configuration, reading it once per daemon."""
    global _loaded
    with _lock:
        if _loaded is None:
            path = config_path()
            _check_trusted(path)
            conf = cfg.ConfigOpts()
            conf.register_opts(_OPTS, group='privileged')
            conf(args=[], default_config_files=[path], project='volsep',
                 use_env=False)
            section = conf.privileged
            _loaded = RootConfig(
                _normalise_roots(section.allowed_roots),
                section.audit_log,
                section.qemu_img_cpu_seconds,
                section.qemu_img_address_space_mib * 1024 * 1024,
                section.qemu_img_wall_seconds,
                (tuple(section.ceph_pools), section.ceph_conf,
                 section.ceph_client),
                LvmConfig(tuple(section.allowed_thin_pools),
                          section.lvm_command, section.lvm_udev,
                          section.lvm_extra_config,
                          section.lvm_command_seconds))
        return _loaded


def list_opts():
    return [('privileged', _OPTS)]
