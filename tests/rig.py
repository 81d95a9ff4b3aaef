"""A test-only root helper: sets up hostile files and inspects root-owned
state for tests that themselves run unprivileged.

It is never installed and never part of volsep; production code cannot reach
it. It keeps every capability, because building hostile fixtures (device
nodes, links to host files, killing daemons) is its whole purpose.
"""

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import time

from oslo_privsep import priv_context



def _held_capabilities():
    with open('/proc/self/status') as f:
        mask = next(int(line.split()[1], 16) for line in f
                    if line.startswith('CapPrm:'))
    return [cap for cap in range(64) if mask >> cap & 1]


ctx = priv_context.PrivContext(
    'tests', cfg_section='volsep_test_rig', pypath=__name__ + '.ctx',
    capabilities=_held_capabilities())


@ctx.entrypoint
def run(argv, env=None, input_data=None, timeout=300):
    proc = subprocess.run(list(argv), capture_output=True, input=input_data,
                          env=dict(env) if env is not None else None,
                          check=False, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


_spawned = {}


@ctx.entrypoint
def spawn(argv, env, log_path):
    """Start a long-running root process; output goes to log_path."""
    log = open(log_path, 'ab')
    proc = subprocess.Popen(list(argv), env=dict(env), stdout=log,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    _spawned[proc.pid] = proc
    return proc.pid


@ctx.entrypoint
def wait(pid, timeout=30):
    """Exit status of a spawned process (negative: killed by signal)."""
    status = _spawned[pid].wait(timeout)   # kept for a retry on timeout
    del _spawned[pid]
    return status


@ctx.entrypoint
def write(path, data, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@ctx.entrypoint
def pwrite(path, offset, data):
    """Write into an existing file as a running VM would."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@ctx.entrypoint
def read(path, offset=0, length=-1):
    with open(path, 'rb') as f:
        f.seek(offset)
        return f.read(length)


def _digest(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


@ctx.entrypoint
def sha256(path):
    return _digest(path)


@ctx.entrypoint
def symlink(target, path):
    os.symlink(target, path)


@ctx.entrypoint
def link(src, dst):
    os.link(src, dst)


@ctx.entrypoint
def mkfifo(path):
    os.mkfifo(path)


@ctx.entrypoint
def mknod_char(path, major, minor):
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(major, minor))


@ctx.entrypoint
def mkdir(path, mode=0o755):
    os.makedirs(path, mode, exist_ok=True)
    os.chmod(path, mode)


@ctx.entrypoint
def rename(src, dst):
    os.rename(src, dst)


@ctx.entrypoint
def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)


@ctx.entrypoint
def lstat(path):
    st = os.lstat(path)
    return {'mode': st.st_mode, 'uid': st.st_uid, 'size': st.st_size,
            'ino': st.st_ino, 'nlink': st.st_nlink,
            'blocks': st.st_blocks, 'mtime_ns': st.st_mtime_ns}


@ctx.entrypoint
def tree(path):
    """Everything below a directory: type, size, inode, mtime and, for
    regular files, a content digest; for 'nothing changed on disk' checks."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            digest = _digest(full) if stat.S_ISREG(st.st_mode) else None
            result[os.path.relpath(full, path)] = (
                stat.S_IFMT(st.st_mode), st.st_size, st.st_ino,
                st.st_mtime_ns, digest)
    return result


@ctx.entrypoint
def swap_loop(directory, name, decoy_target, iterations):
    """Atomically swap `name` between a regular file and a symlink to
    `decoy_target`, `iterations` times, ending on the regular file."""
    real = os.path.join(directory, name)
    spare_file = os.path.join(directory, name + '.file')
    spare_link = os.path.join(directory, name + '.link')
    os.symlink(decoy_target, spare_link)
    for _ in range(iterations):
        os.rename(real, spare_file)
        os.rename(spare_link, real)
        os.rename(real, spare_link)
        os.rename(spare_file, real)
    os.unlink(spare_link)


def _children():
    pids = []
    for tid in os.listdir('/proc/self/task'):
        with open(f'/proc/self/task/{tid}/children') as f:
            pids += [int(pid) for pid in f.read().split()]
    return pids


@ctx.entrypoint
def confined_status(readable=(), writable=()):
    """Start `sleep` through volsep's confinement from this full-root
    process and read its /proc status and limits from outside (inside,
    the child may not open them)."""
    import threading
    import time
    from volsep.privileged import confined
    before = set(_children())
    done = {}
    worker = threading.Thread(target=lambda: done.setdefault(
        'result', confined.run(['/usr/bin/sleep', '2'], cpu_seconds=10,
                               address_space=512 << 20,
                               readable=readable, writable=writable)))
    worker.start()
    try:
        for _ in range(200):
            new = set(_children()) - before
            if new:
                pid = new.pop()
                time.sleep(0.2)  # past exec
                with open(f'/proc/{pid}/status') as f:
                    status = f.read()
                with open(f'/proc/{pid}/limits') as f:
                    limits = f.read()
                return status, limits
            time.sleep(0.01)
        raise RuntimeError('the confined child never appeared')
    finally:
        worker.join()


@ctx.entrypoint
def confined_open(path, flags, readable_paths=(), writable_paths=()):
    """Open ``path`` from a child confined to the files at
    ``readable_paths``/``writable_paths`` (opened here, as the root side
    would): the child's exit status and stderr."""
    from volsep.privileged import confined
    fds = {}
    try:
        for name in tuple(readable_paths) + tuple(writable_paths):
            fds[name] = os.open(name, os.O_RDWR if name in writable_paths
                                else os.O_RDONLY)
        code = (f'import os; os.close(os.open({path!r}, {flags!r}))')
        result = confined.run(
            ['/usr/bin/python3', '-I', '-S', '-c', code], cpu_seconds=10,
            address_space=1 << 30,
            readable=[fds[n] for n in readable_paths],
            writable=[fds[n] for n in writable_paths])
        return result.returncode, result.stderr
    finally:
        for fd in fds.values():
            os.close(fd)


@ctx.entrypoint
def files_containing(directory, needle):
    """Names of the regular files directly in ``directory`` that contain
    ``needle`` (read here, in one call, however large they are)."""
    found = []
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            try:
                with open(entry.path, 'rb') as f:
                    if needle in f.read():
                        found.append(entry.name)
            except FileNotFoundError:
                continue  # renamed away since it was listed
    return found


_held = {}


@ctx.entrypoint
def hold_in_use(path):
    """Mark a file in use as a running root job does (inuse.hold)."""
    from volsep.privileged import inuse
    fd = os.open(path, os.O_RDONLY)
    inuse.hold(fd, path)
    _held[fd] = path
    return fd


@ctx.entrypoint
def release_in_use(fd):
    del _held[fd]
    os.close(fd)


@ctx.entrypoint
def fd_targets(pid):
    """What each descriptor of a process leads to (readlink of /proc)."""
    result = {}
    for name in os.listdir(f'/proc/{pid}/fd'):
        try:
            result[int(name)] = os.readlink(f'/proc/{pid}/fd/{name}')
        except FileNotFoundError:
            continue
    return result


@ctx.entrypoint
def kill_while_child_runs(pid, argv, timeout):
    """SIGKILL ``pid`` as soon as one of its children runs with exactly
    ``argv`` as the start of its command line; whether that happened
    within ``timeout`` seconds."""
    from tests import procs
    wanted = ('\0'.join(argv) + '\0').encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in procs.children(pid):
            try:
                with open(f'/proc/{child}/cmdline', 'rb') as f:
                    running = f.read()
            except FileNotFoundError:
                continue
            if running.startswith(wanted):
                os.kill(pid, signal.SIGKILL)
                return True
        time.sleep(0.0005)
    return False


@ctx.entrypoint
def kill(pid, sig=signal.SIGKILL):
    os.kill(pid, sig)
