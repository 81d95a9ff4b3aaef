"""What confining qemu-img to its descriptors costs: qemu-img info and
convert run as volsep runs them (rlimits, no capabilities, a Landlock
ruleset from the checked descriptors) against the same children with the
rlimits and empty capability set alone (the confinement before Landlock),
interleaved in one run, in this root process, without privsep in between.
"""

import ctypes
import os
import resource
import subprocess

from oslo_privsep import capabilities

from bench import images
from bench import privileged_calls
from bench import timing
from volsep.privileged import confined
from volsep.privileged import qemu

MiB = 1 << 20
_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


def _without_landlock(argv, fds):
    def in_child():
        resource.setrlimit(resource.RLIMIT_CPU, (30, 30))
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        capabilities.drop_all_caps_except([], [], [])
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                          pass_fds=fds, preexec_fn=in_child,
                          env={'LC_ALL': 'C', 'PATH': '/usr/bin:/bin'},
                          check=True)
    return proc


def _with_landlock(argv, readable, writable=()):
    result = confined.run(argv, cpu_seconds=30, address_space=2 << 30,
                          readable=readable, writable=writable)
    assert result.returncode == 0, result.stderr


def qemu_img():
    privileged_calls.start_daemons()
    directory = f'{privileged_calls.ROOT}/bench-confinement'
    os.makedirs(directory, exist_ok=True)
    source = images.image(directory, 'qcow2', 'qcow2', 64)
    fd = os.open(source, os.O_RDONLY)
    info = [qemu.QEMU_IMG, 'info', '-f', 'qcow2', '--force-share',
            '--output=json', qemu.fd_path(fd)]
    try:
        before, after = timing.interleaved_medians(
            [lambda: _without_landlock(info, (fd,)),
             lambda: _with_landlock(info, (fd,))], 200, block=20)
        timing.report('qemu-img info, rlimits + no caps (before)', before,
                      before, 'ms')
        timing.report('qemu-img info, + Landlock on the descriptors', after,
                      before, 'ms')
        out = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        convert = [qemu.QEMU_IMG, 'convert', '-q', '-f', 'qcow2', '-O', 'raw',
                   '-t', 'writeback', qemu.fd_path(fd), qemu.fd_path(out)]
        try:
            before, after = timing.interleaved_medians(
                [lambda: _without_landlock(convert, (fd, out)),
                 lambda: _with_landlock(convert, (fd,), (out,))], 10,
                block=2)
        finally:
            os.close(out)
        timing.report('qemu-img convert 1 GiB (64 MiB data), before',
                      before, before, 'ms')
        timing.report('qemu-img convert, + Landlock', after, before, 'ms')
    finally:
        os.close(fd)
