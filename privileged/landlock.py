"""Landlock rulesets that confine a helper binary to the files it was given.

A ruleset is built in the daemon from descriptors the root side has already
opened and checked: each rule is attached to that inode, not to a name, so
a header naming another file, or a name swapped in after the check, leads
nowhere the ruleset allows. The child applies the ruleset just before exec
(PR_SET_NO_NEW_PRIVS first, as Landlock requires); it holds for uid 0 too
and survives exec. Everything the kernel's ABI can restrict is restricted:
file access, TCP, abstract unix sockets and signals.

No well-kept Python binding exists (the PyPI ones are pre-releases), and
the interface is three system calls, so they are called through ctypes.
"""

import ctypes
import os
import stat

from volsep.privileged import errors

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
_ALL_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1,
                  5: (1 << 16) - 1}
TRUNCATE = 1 << 14
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | (1 << 15)
_ALL_NET = 0b11          # bind and connect TCP, ABI 4
_ALL_SCOPES = 0b11       # abstract unix sockets and signals, ABI 6

READ = READ_FILE
READ_WRITE = READ_FILE | WRITE_FILE | TRUNCATE
# What a dynamically linked program needs to start: its binary, libraries
# and locale data, none of it secret and none of it writable here.
SYSTEM = (('/usr', READ_FILE | READ_DIR | EXECUTE),
          ('/etc/ld.so.cache', READ_FILE),
          ('/dev/null', READ_FILE | WRITE_FILE),
          ('/dev/urandom', READ_FILE))


class _RulesetAttr(ctypes.Structure):
    _fields_ = [('handled_access_fs', ctypes.c_uint64),
                ('handled_access_net', ctypes.c_uint64),
                ('scoped', ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [('allowed_access', ctypes.c_uint64),
                ('parent_fd', ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(result, what):
    if result < 0:
        err = ctypes.get_errno()
        raise errors.ConfinementFailed(f'landlock {what}: {os.strerror(err)}')
    return result


def abi_version():
    """The kernel's Landlock ABI, 0 where Landlock is unavailable."""
    result = _libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                           ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(result, 0)


def _handled_fs(abi):
    return _ALL_FS_BY_ABI[max(k for k in _ALL_FS_BY_ABI if k <= abi)]


class Ruleset:
    """An open ruleset; ``fd`` is what the child restricts itself with."""

    def __init__(self):
        abi = abi_version()
        if abi < 3:
            raise errors.ConfinementFailed(
                f'Landlock ABI {abi} cannot confine helpers (3 or later '
                f'is needed)')
        self.handled = _handled_fs(abi)
        attr = _RulesetAttr(self.handled, _ALL_NET if abi >= 4 else 0,
                            _ALL_SCOPES if abi >= 6 else 0)
        # Fields this kernel does not know are zero, which it accepts.
        self.fd = _check(_libc.syscall(
            _SYS_CREATE_RULESET, ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
            ctypes.c_uint32(0)), 'create_ruleset')

    def allow(self, fd, access):
        """Let the child reach the inode open as ``fd``: for a directory,
        everything beneath it; for a file, only that file."""
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FILE_ONLY
        rule = _PathBeneathAttr(access & self.handled, fd)
        _check(_libc.syscall(_SYS_ADD_RULE, ctypes.c_int(self.fd),
                             ctypes.c_int(_RULE_PATH_BENEATH),
                             ctypes.byref(rule), ctypes.c_uint32(0)),
               'add_rule')

    def allow_system(self):
        for path, access in SYSTEM:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                self.allow(fd, access)
            finally:
                os.close(fd)

    def close(self):
        os.close(self.fd)


def restrict_self(ruleset_fd):
    """In the child, after PR_SET_NO_NEW_PRIVS: from here on only the
    ruleset's inodes can be opened."""
    _check(_libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset_fd),
                         ctypes.c_uint32(0)), 'restrict_self')
