"""Untrusted images: the generated hostile corpus against the root side
and against the real service, and benign images through import and export.

Every hostile file is refused with UnsafeImage by the image rules, before
qemu-img is started, both by the frontend (through the CLI) and by the
privileged entrypoints on their own (defence in depth); the pool stays as
it was and no byte of the host file reaches it. Every benign image imports
and exports with the guest-visible content unchanged (qemu-img compare).
"""

import collections
import os
import subprocess
import threading

import pytest

from tests import image_corpus as corpus
from tests import service_helpers as sh
from volsep.privileged import errors
from volsep.privileged import qemu

TEST_USER = os.environ.get('VOLSEP_TEST_USER', 'volsep-test')
POOL_LIMIT = 1 << 30
POLICY = {'rules': [{'users': ['root', TEST_USER, 'volsep'], 'allow': ['*']}],
          'pools': {'default': {'max_volume_size': POOL_LIMIT}}}


def _by_name(cases):
    return pytest.mark.parametrize('case', cases, ids=[c.name for c in cases])


def _craft(case, tmp_path):
    directory = tmp_path / case.name
    directory.mkdir()
    return case.make(str(directory))


def _files(rig, directory):
    """What a 'nothing changed' check compares: every file's inode and
    content digest (directory timestamps move when a refused upload is
    removed again)."""
    return {name: (entry[2], entry[4])
            for name, entry in rig.tree(directory).items() if entry[4]}


# -- the corpus is really hostile ---------------------------------------------

@pytest.mark.parametrize('name', corpus.LEAKS)
def test_bare_qemu_img_leaks_the_host_file(name, tmp_path):
    """Without volsep's checks these files copy a host file: the corpus
    tests something real."""
    case = next(c for c in corpus.HOSTILE if c.name == name)
    path = _craft(case, tmp_path)
    out = tmp_path / 'out.raw'
    subprocess.run(['qemu-img', 'convert', '-f',
                    corpus.qemu_format(case.declared), '-O', 'raw', path,
                    str(out)], check=True, capture_output=True)
    assert corpus.host_bytes_in(out.read_bytes())


# -- the root side refuses on its own -----------------------------------------

@_by_name(corpus.HOSTILE)
def test_privileged_entrypoints_refuse_hostile_images(case, tmp_path,
                                                      xfs_dir, rig):
    with open(_craft(case, tmp_path), 'rb') as f:
        rig.write(f'{xfs_dir}/upload', f.read())
    before = _files(rig, xfs_dir)
    with pytest.raises(errors.UnsafeImage):
        qemu.convert(f'{xfs_dir}/upload', case.declared,
                     f'{xfs_dir}/converted.raw', 'raw')
    with pytest.raises(errors.UnsafeImage):
        qemu.info(f'{xfs_dir}/upload', case.declared)
    assert _files(rig, xfs_dir) == before


@_by_name(corpus.BENIGN[:-1])
def test_privileged_convert_of_benign_images(case, tmp_path, xfs_dir, rig):
    with open(_craft(case, tmp_path), 'rb') as f:
        rig.write(f'{xfs_dir}/upload', f.read())
    assert qemu.info(f'{xfs_dir}/upload', case.declared)['format'] == \
        corpus.qemu_format(case.declared)
    qemu.convert(f'{xfs_dir}/upload', case.declared, f'{xfs_dir}/out.raw',
                 'raw')
    rc, _, err = rig.run(['qemu-img', 'compare', '-f', 'raw', '-F',
                          corpus.qemu_format(case.declared),
                          f'{xfs_dir}/out.raw', f'{xfs_dir}/upload'])
    assert rc == 0, err


# -- through the service and the CLI -------------------------------------------

@pytest.fixture(scope='module')
def service():
    from tests import rig
    state_dir = sh.fresh_state_dir()
    svc = sh.Service(state_dir, policy=POLICY).start()
    yield svc
    if svc.pid is not None:
        svc.stop()
    rig.rmtree(state_dir)


def _volume_for(service, case, name='root'):
    address = f'{case.name}:{name}'
    service.json('volume', 'create', address, '--pool', 'default', '--size',
                 '1M')
    return address


def _import_streamed(service, address, path, declared):
    """The byte stream, as a remote caller or a terminal is served: the
    image is checked by the frontend as it arrives."""
    from volsep.frontend import client as client_module
    c = client_module.Client(service.socket)
    try:
        with open(path, 'rb') as f:
            c.import_stream(address, f, os.path.getsize(path), declared)
    except client_module.RemoteError as err:
        return 1, '', f'volsep: {err.error_class}: {err}'
    finally:
        c.close()
    return 0, '', ''


def _refused(service, rig, address, path, declared, how='descriptor'):
    """``how``: 'descriptor', the CLI handing its open file over (checked
    by the root side where it lies), or 'stream'."""
    pool_dir = f'{service.state_dir}/pools/default'
    before = _files(rig, pool_dir)
    info = service.json('volume', 'info', address)
    since = len(rig.read(f'{service.state_dir}/audit.log').splitlines())
    if how == 'stream':
        rc, out, err = _import_streamed(service, address, path, declared)
    else:
        rc, out, err = service.cli('volume', 'import', address, path,
                                   '--format', declared)
    assert rc == 1, (out, err)
    assert err.startswith('volsep: UnsafeImage: '), err
    assert _files(rig, pool_dir) == before
    assert service.json('volume', 'info', address) == info
    for name in before:
        assert not corpus.host_bytes_in(rig.read(f'{pool_dir}/{name}'))
    calls = rig.read(f'{service.state_dir}/audit.log').splitlines()[since:]
    handed = sum(b'import_from_descriptor' in line for line in calls)
    assert handed == (how == 'descriptor'), calls
    return err


@_by_name(corpus.HOSTILE)
@pytest.mark.parametrize('how', ['descriptor', 'stream'])
def test_import_refuses_hostile_images(case, how, service, rig, tmp_path):
    address = _volume_for(service, case, how)
    _refused(service, rig, address, _craft(case, tmp_path), case.declared,
             how)


def test_import_refuses_a_virtual_size_beyond_the_pool_limit(service, rig,
                                                             tmp_path):
    case = corpus.BEYOND_POOL_LIMIT
    address = _volume_for(service, case)
    err = _refused(service, rig, address, _craft(case, tmp_path),
                   case.declared)
    assert f'exceeds the limit of {POOL_LIMIT}' in err


def test_refusal_comes_before_the_rest_of_a_long_stream(service, rig,
                                                        tmp_path):
    """A hostile header followed by 256 MiB, streamed: refused as soon as
    the headers are read; the client sees UnsafeImage, not a broken
    pipe."""
    case = next(c for c in corpus.HOSTILE
                if c.name == 'qcow2-backing-host-file')
    path = _craft(case, tmp_path)
    with open(path, 'ab') as f:
        f.truncate(256 << 20)
    address = _volume_for(service, case, 'long')
    _refused(service, rig, address, path, case.declared, 'stream')


@_by_name(corpus.BENIGN)
def test_benign_images_round_trip(case, service, rig, tmp_path):
    address = _volume_for(service, case)
    source = _craft(case, tmp_path)
    source_fmt = corpus.qemu_format(case.declared)
    info = service.json('volume', 'import', address, source, '--format',
                        case.declared)
    virtual = service.json('volume', 'info', address)['size']
    assert info['size'] == virtual
    for fmt in ('raw', 'qcow2'):
        exported = tmp_path / f'exported.{fmt}'
        service.json('volume', 'export', address, str(exported), '--format',
                     fmt)
        compare = subprocess.run(
            ['qemu-img', 'compare', '-f', fmt, '-F', source_fmt,
             str(exported), source], capture_output=True, text=True)
        assert compare.returncode == 0, compare.stdout + compare.stderr
    raw = (tmp_path / 'exported.raw').read_bytes()
    assert len(raw) == virtual
    assert not corpus.host_bytes_in(raw)
    if case.declared == 'raw':  # never probed: byte-exact, headers and all
        with open(source, 'rb') as f:
            assert raw == f.read()


def test_convert_checks_exactly_what_qemu_img_reads(tmp_path, xfs_dir, rig):
    """A compromised frontend rewrites the upload between benign and
    hostile headers while the root side converts it: the root side converts
    the private clone it checked, so the host file never leaks."""
    # Same layout, only the first cluster differs: with the hostile one,
    # every unallocated guest byte is read from the host file.
    good = corpus.file_bytes(corpus.empty_qcow2(str(tmp_path)))
    bad = corpus.file_bytes(corpus.qcow2_backing_host_file(
        str(tmp_path)))[:64 << 10]
    upload = f'{xfs_dir}/upload'
    rig.write(upload, good)
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            rig.pwrite(upload, 0, bad)
            rig.pwrite(upload, 0, good[:64 << 10])
    flipper = threading.Thread(target=flip)
    flipper.start()
    outcomes = collections.Counter()
    try:
        for i in range(40):
            out = f'{xfs_dir}/out{i}.raw'
            try:
                qemu.convert(upload, 'qcow2', out, 'raw')
            except errors.PrivilegedError as err:
                outcomes[type(err).__name__] += 1
                continue
            outcomes['converted'] += 1
            assert not corpus.host_bytes_in(rig.read(out))
    finally:
        stop.set()
        flipper.join()
    assert sum(outcomes.values()) == 40
    assert set(outcomes) <= {'converted', 'UnsafeImage', 'InvalidImage'}
