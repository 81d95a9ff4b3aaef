"""A compromised frontend attacks the root side with its own entrypoints.

The test process is the unprivileged frontend uid. It builds hostile images
with the entrypoints alone (create + write_at of a header it crafted), then
calls each root job while a second thread races it, swapping the job's
files for hostile ones (rename), rewriting their headers (write_at),
linking and unlinking them. Outside every allowed root lie a root-only
0600 canary and a root-owned 0644 target. After hundreds of rounds per
entrypoint: the canary's bytes are in no pool file and no reply, and the
target is unchanged.

Without the confinement of qemu-img to the checked descriptors (Landlock)
and the in-use marks on a job's files, pull and commit leak the canary or
overwrite the target within a few rounds.
"""

import os
import random
import subprocess
import threading
import time

import pytest

from volsep.privileged import chain
from volsep.privileged import errors
from volsep.privileged import files
from volsep.privileged import qemu

MiB = 1 << 20
CANARY = b'CANARY-0600-' * 5461          # 64 KiB of recognisable bytes
TARGET = b'target-0644-must-not-change\n' * 2340
ROUNDS = 200


@pytest.fixture
def host(outside_dir, rig):
    rig.write(f'{outside_dir}/canary', CANARY, 0o600)
    rig.write(f'{outside_dir}/target', TARGET, 0o644)
    return {'canary': f'{outside_dir}/canary',
            'target': f'{outside_dir}/target', 'dir': outside_dir}


def _header(tmp_path, name, *options):
    """The first MiB of a qcow2 the test user crafts on its own, to be
    planted with write_at (a frontend has no other way to write)."""
    path = tmp_path / name
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', *options,
                    str(path), str(MiB)], check=True, capture_output=True)
    with open(path, 'rb') as f:
        return f.read()


def _plant(path, data, size=MiB):
    files.create(path, max(size, len(data)))
    files.write_at(path, 0, data)


def _data_file_header(tmp_path, target):
    """A qcow2 whose external data file is ``target``: made with a stand-in
    of the same length (the test user cannot create the target), whose
    name is then replaced in the header."""
    stand_in = '/tmp/' + 'v' * (len(target) - len('/tmp//target')) + \
        '/target'
    os.makedirs(os.path.dirname(stand_in), exist_ok=True)
    try:
        header = _header(tmp_path, 'd.qcow2', '-o',
                         f'data_file={stand_in},data_file_raw=on')
    finally:
        os.unlink(stand_in)
        os.rmdir(os.path.dirname(stand_in))
    assert stand_in.encode() in header
    return header.replace(stand_in.encode(), target.encode())


@pytest.fixture
def hostile(tmp_path, host):
    return {
        # Reads the canary as its backing file.
        'backing': _header(tmp_path, 'b.qcow2', '-u', '-b', host['canary'],
                           '-F', 'raw'),
        # Its data lives in the target: reading leaks it, writing ruins it.
        'data_file': _data_file_header(tmp_path, host['target']),
    }


def _ignore(call, *args):
    try:
        return call(*args)
    except (errors.PrivilegedError, OSError):
        return None


class Attacker:
    """Races the jobs: every round puts hostile bytes where a checked
    file was, by every means an entrypoint offers, then puts the good
    file back."""

    def __init__(self, directory, victims, hostile_images):
        self.directory = directory
        self.victims = victims
        self.hostile = hostile_images
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)

    def _loop(self):
        spare = f'{self.directory}/spare'
        evil = f'{self.directory}/evil'
        chance = random.Random(0)
        while not self.stop.is_set():
            victim = chance.choice(self.victims)
            data = chance.choice(self.hostile)
            # Hostile bytes stay in place for a random while, so that some
            # rounds fall between a job's check and its child's open.
            linger = chance.uniform(0, 0.03)
            if chance.random() < 0.5:
                # Swap a hostile file in under the victim's name, then put
                # the original back.
                _ignore(files.unlink, evil)
                _ignore(_plant, evil, data)
                if _ignore(files.rename, victim, spare) is not None:
                    _ignore(files.rename, evil, victim)
                    time.sleep(linger)
                    _ignore(files.rename, spare, victim)
            else:
                # Rewrite the victim's header in place, then restore it.
                saved = _ignore(files.read_at, victim, 0, 4096)
                if saved:
                    _ignore(files.write_at, victim, 0, data[:4096])
                    time.sleep(linger)
                    _ignore(files.write_at, victim, 0, saved)
            _ignore(files.link, victim, f'{self.directory}/alias')
            _ignore(files.unlink, f'{self.directory}/alias')
            time.sleep(chance.uniform(0, 0.01))


def _assert_no_leak(rig, directory, host, replies=()):
    leaked = rig.files_containing(directory, CANARY[:4096])
    assert not leaked, f'the canary leaked into {leaked}'
    for reply in replies:
        assert CANARY[:64] not in repr(reply).encode(), reply
    assert rig.read(host['target']) == TARGET, 'the host target changed'


def _chain(d, rig):
    """base.raw <- mid.qcow2 <- top.qcow2, each with its own data."""
    qemu.create(f'{d}/base.raw', 'raw', MiB)
    qemu.create(f'{d}/mid.qcow2', 'qcow2', MiB, backing=f'{d}/base.raw',
                backing_fmt='raw')
    qemu.create(f'{d}/top.qcow2', 'qcow2', MiB, backing=f'{d}/mid.qcow2',
                backing_fmt='qcow2')
    for name, fmt, pattern in (('base.raw', 'raw', 1), ('mid.qcow2',
                               'qcow2', 2), ('top.qcow2', 'qcow2', 3)):
        rc, _, err = rig.run(['qemu-io', '-f', fmt, '-c',
                              f'write -P {pattern} {pattern * 65536} 65536',
                              f'{d}/{name}'])
        assert rc == 0, err
    return [[f'{d}/top.qcow2', 'qcow2'], [f'{d}/mid.qcow2', 'qcow2'],
            [f'{d}/base.raw', 'raw']]


def _keep(d, names):
    for name in names:
        files.clone(f'{d}/{name}', f'{d}/{name}.keep', 'auto')


def _restore(d, names):
    # Replaced by a rename, which the attacker's own renames cannot fail.
    for name in names:
        _ignore(files.unlink, f'{d}/{name}.new')
        files.clone(f'{d}/{name}.keep', f'{d}/{name}.new', 'auto')
        files.rename(f'{d}/{name}.new', f'{d}/{name}')


@pytest.mark.parametrize('job', ['pull', 'commit'])
def test_chain_jobs_never_reach_host_files(job, xfs_dir, host, hostile,
                                           rig):
    layers = _chain(xfs_dir, rig)
    names = ['top.qcow2', 'mid.qcow2', 'base.raw']
    _keep(xfs_dir, names)
    replies = []
    # pull writes into top, commit into the layer below it: the written
    # layer is where a data file naming the target does harm.
    victims = [f'{xfs_dir}/{n}' for n in
               (['top.qcow2'] if job == 'pull' else ['mid.qcow2', 'top.qcow2'])]
    with Attacker(xfs_dir, victims, list(hostile.values())):
        for _ in range(ROUNDS):
            if job == 'pull':
                replies.append(_ignore(chain.pull, layers, 0, 1))
            else:
                replies.append(_ignore(chain.commit, layers, 0, 1))
            _assert_no_leak(rig, xfs_dir, host)
            _restore(xfs_dir, names)
    _assert_no_leak(rig, xfs_dir, host, replies)
    assert any(replies), 'no job ever ran: the race proved nothing'


def test_single_image_jobs_never_reach_host_files(xfs_dir, host, hostile,
                                                  rig):
    """info, layer (header read), convert and clone of a file that is
    being swapped for hostile ones."""
    qemu.create(f'{xfs_dir}/img.qcow2', 'qcow2', MiB)
    rc, _, err = rig.run(['qemu-io', '-f', 'qcow2', '-c',
                          'write -P 7 0 65536', f'{xfs_dir}/img.qcow2'])
    assert rc == 0, err
    _keep(xfs_dir, ['img.qcow2'])
    victim = f'{xfs_dir}/img.qcow2'
    replies = []
    with Attacker(xfs_dir, [victim], list(hostile.values())):
        for n in range(ROUNDS):
            replies.append(_ignore(qemu.info, victim, 'qcow2'))
            replies.append(_ignore(chain.layer, victim, 'qcow2'))
            out = f'{xfs_dir}/out-{n % 2}'
            _ignore(files.unlink, out)
            replies.append(_ignore(qemu.convert, victim, 'qcow2', out,
                                   'raw'))
            replies.append(_ignore(files.clone, victim, out + '.c', 'auto'))
            _ignore(files.unlink, out + '.c')
            _assert_no_leak(rig, xfs_dir, host)
            _restore(xfs_dir, ['img.qcow2'])
    _assert_no_leak(rig, xfs_dir, host, replies)
    assert any(replies)


def test_a_file_in_use_cannot_be_changed(xfs_dir, rig):
    """While a job holds a file, write_at, truncate, rename (either way),
    link, unlink and rotate refuse with InUse; afterwards they work again."""
    files.create(f'{xfs_dir}/held', MiB)
    files.create(f'{xfs_dir}/other', MiB)
    before = rig.tree(xfs_dir)
    holder = rig.hold_in_use(f'{xfs_dir}/held')
    try:
        for call in (lambda: files.write_at(f'{xfs_dir}/held', 0, b'x'),
                     lambda: files.truncate(f'{xfs_dir}/held', 2 * MiB),
                     lambda: files.rename(f'{xfs_dir}/held',
                                          f'{xfs_dir}/moved'),
                     lambda: files.rename(f'{xfs_dir}/other',
                                          f'{xfs_dir}/held'),
                     lambda: files.link(f'{xfs_dir}/held',
                                        f'{xfs_dir}/alias'),
                     lambda: files.unlink(f'{xfs_dir}/held'),
                     lambda: files.rotate(xfs_dir, [['held', 'moved']]),
                     lambda: files.rotate(xfs_dir, [], ['held'])):
            with pytest.raises(errors.InUse):
                call()
        assert rig.tree(xfs_dir) == before
    finally:
        rig.release_in_use(holder)
    files.write_at(f'{xfs_dir}/held', 0, b'x')
    files.unlink(f'{xfs_dir}/held')


def _qcow2_over(tmp_path, backing):
    data = tmp_path / 'data.raw'
    data.write_bytes(b'X' * MiB)
    top = tmp_path / 't.qcow2'
    subprocess.run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2',
                    str(data), str(top)], check=True)
    subprocess.run(['qemu-img', 'rebase', '-q', '-u', '-f', 'qcow2', '-b',
                    backing, '-F', 'raw', str(top)], check=True)
    return top.read_bytes()


def test_a_job_cannot_write_a_file_another_job_holds(xfs_dir, rig,
                                                     tmp_path):
    """A job checked a file and holds it: a second job that would write it
    (a commit into it as a raw base) is refused, as write_at is, so the
    first job's check still describes what its qemu-img reads (found by
    review: both took shared marks)."""
    base, top = f'{xfs_dir}/F.raw', f'{xfs_dir}/T.qcow2'
    files.create(base, MiB)
    image = _qcow2_over(tmp_path, base)
    _plant(top, image, len(image))
    holder = rig.hold_in_use(base)
    try:
        with pytest.raises(errors.InUse):
            chain.commit([[top, 'qcow2'], [base, 'raw']], 0, 1)
        assert files.read_at(base, 0, 16) == b'\0' * 16
    finally:
        rig.release_in_use(holder)
    chain.commit([[top, 'qcow2'], [base, 'raw']], 0, 1)
    assert files.read_at(base, 0, 16) == b'X' * 16
