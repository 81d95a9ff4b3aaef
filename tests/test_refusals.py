"""Every path-taking entrypoint refuses hostile paths and changes nothing."""

import threading

import pytest

from volsep.privileged import errors
from volsep.privileged import files
from volsep.privileged import qemu



def _in_directory(path, renames, unlink):
    """files.rotate's arguments for the file ``path``: its directory, the
    renames ``renames`` makes of its name, and its unlink if ``unlink``."""
    directory, _, name = path.rpartition('/')
    return directory, renames(name), [name] if unlink else []


# name -> function of (hostile path, a good file, a fresh good name)
OPERATIONS = {
    'create': lambda p, good, new: files.create(p, 4096),
    'clone-src': lambda p, good, new: files.clone(p, new),
    'clone-dst': lambda p, good, new: files.clone(good, p),
    'truncate': lambda p, good, new: files.truncate(p, 8192),
    'rename-src': lambda p, good, new: files.rename(p, new),
    'rename-dst': lambda p, good, new: files.rename(good, p),
    'link-src': lambda p, good, new: files.link(p, new),
    'link-dst': lambda p, good, new: files.link(good, p),
    'unlink': lambda p, good, new: files.unlink(p),
    'rotate-rename': lambda p, good, new: files.rotate(
        *_in_directory(p, lambda name: [[name, 'fresh']], False)),
    'rotate-unlink': lambda p, good, new: files.rotate(
        *_in_directory(p, lambda name: [], True)),
    'fsync': lambda p, good, new: files.fsync(p),
    'mkdir': lambda p, good, new: files.mkdir(p),
    'rmdir': lambda p, good, new: files.rmdir(p),
    'list_dir': lambda p, good, new: files.list_dir(p),
    'list_tree': lambda p, good, new: files.list_tree(p, 2),
    'qemu-info': lambda p, good, new: qemu.info(p, 'raw'),
    'qemu-create': lambda p, good, new: qemu.create(p, 'qcow2', 1 << 20),
    'qemu-convert-src': lambda p, good, new: qemu.convert(p, 'raw', new,
                                                          'raw'),
    'qemu-convert-dst': lambda p, good, new: qemu.convert(good, 'raw', p,
                                                          'raw'),
}
# Operations that only change names, never data: a second hard link of a
# host file may be renamed or unlinked without the host file changing.
NAME_ONLY = {'rename-src', 'rename-dst', 'unlink', 'fsync', 'rotate-rename',
             'rotate-unlink'}

CASES = ['outside', 'dotdot', 'absolute-escape', 'relative', 'symlink-last',
         'symlink-middle', 'device', 'fifo', 'hardlink-outside', 'empty',
         'double-slash', 'bad-characters']


def _build(case, d, outside, rig):
    """Make the hostile situation; return the path to hand over."""
    if case == 'outside':
        return f'{outside}/secret'
    if case == 'dotdot':
        return f'{d}/../{outside.rsplit("/", 1)[1]}/secret'
    if case == 'absolute-escape':
        return '/etc/passwd'
    if case == 'relative':
        return 'etc/passwd'
    if case == 'symlink-last':
        rig.symlink(f'{outside}/secret', f'{d}/link')
        return f'{d}/link'
    if case == 'symlink-middle':
        rig.symlink(outside, f'{d}/dirlink')
        return f'{d}/dirlink/secret'
    if case == 'device':
        rig.mknod_char(f'{d}/null', 1, 3)
        return f'{d}/null'
    if case == 'fifo':
        rig.mkfifo(f'{d}/fifo')
        return f'{d}/fifo'
    if case == 'hardlink-outside':
        rig.link(f'{outside}/secret', f'{d}/hl')
        return f'{d}/hl'
    if case == 'empty':
        return ''
    if case == 'double-slash':
        return f'{d}//good'
    if case == 'bad-characters':
        return f'{d}/a\nb'
    raise AssertionError(case)


@pytest.fixture
def plain_dir(pool_dir_on):
    # The host file must share a filesystem with the pool for the hard-link
    # case, so these run on the root that lives on the host filesystem.
    return pool_dir_on('plain')


# Name-only operations on a hard link are allowed; they have their own test.
REFUSALS = [(op, case) for op in sorted(OPERATIONS) for case in CASES
            if not (case == 'hardlink-outside' and op in NAME_ONLY)]


@pytest.mark.parametrize('op,case', REFUSALS)
def test_hostile_path_is_refused_and_nothing_changes(op, case, plain_dir,
                                                     outside_dir, rig):
    files.create(f'{plain_dir}/good', 4096)
    hostile = _build(case, plain_dir, outside_dir, rig)
    before = rig.tree(plain_dir), rig.tree(outside_dir)
    with pytest.raises(errors.PrivilegedError) as info:
        OPERATIONS[op](hostile, f'{plain_dir}/good', f'{plain_dir}/new')
    assert str(info.value)
    assert (rig.tree(plain_dir), rig.tree(outside_dir)) == before


def test_name_only_operations_on_hard_link_leave_host_file_intact(
        plain_dir, outside_dir, rig):
    secret_before = rig.tree(outside_dir)['secret'][-1]
    rig.link(f'{outside_dir}/secret', f'{plain_dir}/hl')
    files.fsync(f'{plain_dir}/hl')
    files.rename(f'{plain_dir}/hl', f'{plain_dir}/hl2')
    files.unlink(f'{plain_dir}/hl2')
    after = rig.tree(outside_dir)['secret']
    assert after[-1] == secret_before
    assert rig.lstat(f'{outside_dir}/secret')['nlink'] == 1


def test_out_of_range_sizes_are_refused(xfs_dir, rig):
    files.create(f'{xfs_dir}/v', 4096)
    before = rig.tree(xfs_dir)
    for size in (-1, 1 << 60, (1 << 63) - 1, 1.5, '4096', True, None):
        with pytest.raises(errors.InvalidArgument):
            files.truncate(f'{xfs_dir}/v', size)
        with pytest.raises(errors.InvalidArgument):
            files.create(f'{xfs_dir}/w', size)
    assert rig.tree(xfs_dir) == before


def test_shrink_needs_explicit_permission(xfs_dir, rig):
    files.create(f'{xfs_dir}/v', 8192)
    with pytest.raises(errors.InvalidArgument):
        files.truncate(f'{xfs_dir}/v', 4096)
    assert rig.lstat(f'{xfs_dir}/v')['size'] == 8192
    files.truncate(f'{xfs_dir}/v', 4096, allow_shrink=True)
    assert rig.lstat(f'{xfs_dir}/v')['size'] == 4096


def test_rename_noreplace_keeps_existing(xfs_dir, rig):
    rig.write(f'{xfs_dir}/a', b'a')
    rig.write(f'{xfs_dir}/b', b'b')
    with pytest.raises(errors.AlreadyExists):
        files.rename(f'{xfs_dir}/a', f'{xfs_dir}/b', noreplace=True)
    assert rig.read(f'{xfs_dir}/b') == b'b'
    files.rename(f'{xfs_dir}/a', f'{xfs_dir}/b')
    assert rig.read(f'{xfs_dir}/b') == b'a'
    assert 'a' not in rig.tree(xfs_dir)


def _race(swapper, call, iterations=3000, rounds=20):
    """Call while the swapper runs, for more rounds while the calls have
    not yet met both states (on a loaded machine a round may see only a
    few calls); the tests then show the race was really run."""
    outcomes = {'ok': 0, 'refused': 0}
    for _ in range(rounds):
        done = threading.Event()

        def swap():
            try:
                swapper(iterations)
            finally:
                done.set()
        thread = threading.Thread(target=swap)
        thread.start()
        while not done.is_set():
            try:
                call()
                outcomes['ok'] += 1
            except (errors.PathRefused, errors.NotFound):
                outcomes['refused'] += 1
        thread.join()
        if outcomes['ok'] and outcomes['refused']:
            break
    return outcomes


def test_symlink_swapped_in_as_last_component_never_escapes(
        plain_dir, outside_dir, rig):
    secret = rig.tree(outside_dir)['secret']
    files.create(f'{plain_dir}/vol', 4096)
    outcomes = _race(
        lambda n: rig.swap_loop(plain_dir, 'vol', f'{outside_dir}/secret', n),
        lambda: files.truncate(f'{plain_dir}/vol', 8192))
    assert rig.tree(outside_dir)['secret'] == secret
    assert outcomes['refused'] > 0 and outcomes['ok'] > 0, outcomes


def test_symlink_swapped_in_as_middle_component_never_escapes(
        plain_dir, outside_dir, rig):
    secret = rig.tree(outside_dir)['secret']
    files.mkdir(f'{plain_dir}/sub')
    files.create(f'{plain_dir}/sub/secret', 4096)
    outcomes = _race(
        lambda n: rig.swap_loop(plain_dir, 'sub', outside_dir, n),
        lambda: files.truncate(f'{plain_dir}/sub/secret', 4096,
                               allow_shrink=True))
    assert rig.tree(outside_dir)['secret'] == secret
    assert outcomes['refused'] > 0 and outcomes['ok'] > 0, outcomes


def test_list_tree_never_descends_a_symlink(plain_dir, outside_dir, rig):
    files.mkdir(f'{plain_dir}/dom')
    files.mkdir(f'{plain_dir}/dom/vol')
    files.create(f'{plain_dir}/dom/vol/c1.img', 4096)
    rig.symlink(outside_dir, f'{plain_dir}/evil')
    rig.symlink(outside_dir, f'{plain_dir}/dom/evilvol')
    tree = files.list_tree(plain_dir, 2)
    assert list(tree) == ['dom/vol']
    assert [e['name'] for e in tree['dom/vol']] == ['c1.img']
    with pytest.raises(errors.InvalidArgument):
        files.list_tree(plain_dir, 7)


@pytest.mark.parametrize('renames,unlinks', [
    ([['good', '../escaped']], []),
    ([['good', 'sub/deeper']], []),
    ([['../good', 'fresh']], []),
    ([['good', '']], []),
    ([['good', '.']], []),
    ([], ['../good']),
    ([], ['/etc/passwd']),
    ([], ['a\nb']),
    ([['good']], []),
    ([['good', 'fresh', 'extra']], []),
    ('good', []),
    ([['good', 7]], []),
    ([], 'good'),
    ([], [None]),
    ([['good', 'fresh']], ['spare'] * 65),
])
def test_a_rotation_with_any_bad_name_changes_nothing(renames, unlinks,
                                                       plain_dir, rig):
    """Every name is checked before the first change: a good rename
    listed before a hostile one does not happen either."""
    files.create(f'{plain_dir}/good', 4096)
    files.create(f'{plain_dir}/spare', 4096)
    good_first = [['spare', 'moved']] if isinstance(renames, list) else \
        renames
    before = rig.tree(plain_dir)
    with pytest.raises(errors.PrivilegedError) as info:
        files.rotate(plain_dir, good_first + renames
                     if isinstance(renames, list) else renames, unlinks)
    assert str(info.value)
    assert rig.tree(plain_dir) == before


def test_a_rotation_never_replaces_and_stops_at_the_first_failure(
        plain_dir, rig):
    for name in ('w', 'c1', 'c2', 'r0'):
        rig.write(f'{plain_dir}/{name}', name.encode())
    with pytest.raises(errors.AlreadyExists):
        files.rotate(plain_dir, [['w', 'c3'], ['c1', 'c2']], ['r0'])
    # The first rename was done and stays; nothing after the failure.
    assert sorted(rig.tree(plain_dir)) == ['c1', 'c2', 'c3', 'r0']
    assert rig.read(f'{plain_dir}/c2') == b'c2'
    files.rotate(plain_dir, [['c2', 'r2']], ['r0', 'c1'])
    assert sorted(rig.tree(plain_dir)) == ['c3', 'r2']
    assert rig.read(f'{plain_dir}/r2') == b'c2'


def test_a_rotation_refuses_what_is_no_regular_file_of_its_own(
        plain_dir, outside_dir, rig):
    files.mkdir(f'{plain_dir}/sub')
    rig.symlink(f'{outside_dir}/secret', f'{plain_dir}/link')
    rig.mkfifo(f'{plain_dir}/fifo')
    before = rig.tree(plain_dir), rig.tree(outside_dir)
    for renames, unlinks in (([['sub', 'moved']], []), ([], ['sub']),
                             ([['link', 'moved']], []), ([], ['link']),
                             ([['fifo', 'moved']], []), ([], ['fifo'])):
        with pytest.raises(errors.PathRefused):
            files.rotate(plain_dir, renames, unlinks)
    assert (rig.tree(plain_dir), rig.tree(outside_dir)) == before
