"""Run a helper binary (qemu-img) from the root daemon, confined to the
descriptors it is handed.

Commands the daemon execs would otherwise get full root capabilities
whatever the context's list (FACTS.md), and even with none, uid 0 still
opens every root-owned file, including any a hostile image header names.
So, in the child, before exec: rlimits for CPU and address space,
PR_SET_NO_NEW_PRIVS, an empty capability set, and a Landlock ruleset built
in the daemon from the checked descriptors (``readable``, ``writable``)
plus the system files a program needs to start (landlock.SYSTEM). The
helper can then open the checked inodes (as /dev/fd/N) and nothing else:
not a backing file or data file a header names, not a file renamed into a
checked name afterwards.

setrlimit in the child costs nothing; oslo.concurrency's prlimit wrapper
starts a second interpreter per call (~22 ms, FACTS.md), and its execute()
cannot pass descriptors.
"""

import ctypes
import resource
import subprocess

from oslo_privsep import capabilities

from volsep.privileged import landlock

_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def _confine(cpu_seconds, address_space, ruleset_fd):
    def in_child():
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), 'PR_SET_NO_NEW_PRIVS failed')
        capabilities.drop_all_caps_except([], [], [])
        landlock.restrict_self(ruleset_fd)
    return in_child


def _ruleset(readable, writable):
    ruleset = landlock.Ruleset()
    try:
        ruleset.allow_system()
        for fd in readable:
            ruleset.allow(fd, landlock.READ)
        for fd in writable:
            ruleset.allow(fd, landlock.READ_WRITE)
    except BaseException:
        ruleset.close()
        raise
    return ruleset


def run(argv, *, cpu_seconds, address_space, readable=(), writable=(),
        timeout=None):
    """Run ``argv`` able to open only the inodes open as ``readable`` and
    ``writable`` descriptors (both passed to it under the same numbers)."""
    ruleset = _ruleset(readable, writable)
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True,
            pass_fds=tuple(readable) + tuple(writable),
            preexec_fn=_confine(cpu_seconds, address_space, ruleset.fd),
            env={'LC_ALL': 'C', 'PATH': '/usr/bin:/bin'}, timeout=timeout,
            check=False)
    finally:
        ruleset.close()
    return Result(proc.returncode,
                  proc.stdout.decode(errors='replace'),
                  proc.stderr.decode(errors='replace'))
