"""Run a helper binary (qemu-img) from the root daemon with no privileges.

Commands the daemon execs would otherwise get full root capabilities
whatever the context's list (FACTS.md). In the child, before exec: rlimits
for CPU and address space, PR_SET_NO_NEW_PRIVS, then an empty capability
set. With no_new_privs the kernel caps what exec grants at what the process
already held, so the helper runs as uid 0 with no capabilities at all: it can
open only the root-owned 0600 files the daemon hands it as descriptors.

setrlimit in the child costs nothing; oslo.concurrency's prlimit wrapper
starts a second interpreter per call (~22 ms, FACTS.md), and its execute()
cannot pass descriptors.
"""

import ctypes
import resource
import subprocess

from oslo_privsep import capabilities

_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def _confine(cpu_seconds, address_space):
    def in_child():
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), 'PR_SET_NO_NEW_PRIVS failed')
        capabilities.drop_all_caps_except([], [], [])
    return in_child


def run(argv, *, cpu_seconds, address_space, pass_fds=(), timeout=None):
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True,
        pass_fds=pass_fds, preexec_fn=_confine(cpu_seconds, address_space),
        env={'LC_ALL': 'C', 'PATH': '/usr/bin:/bin'}, timeout=timeout,
        check=False)
    return Result(proc.returncode,
                  proc.stdout.decode(errors='replace'),
                  proc.stderr.decode(errors='replace'))
