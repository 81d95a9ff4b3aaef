"""Backing chains of a pool's own images: what a layer's header says, and
offline block-commit and block-pull.

A chain is a list of [path, format] pairs, top first. Before qemu-img
touches one, every layer is opened beneath an allowed root without
symlinks, must be a single-link regular file that passes the image rules
(a backing file is allowed here, nothing else is), and each layer's header
must name exactly the next layer, by absolute path and with exactly its
format; the base has no backing file; no layer appears twice. Headers are
read here in Python with the format the layer above recorded, never probed
and never by `qemu-img info --backing-chain`.

The layers stay open, and held in use (inuse.py), from the check until the
job ends, so no entrypoint can rewrite, rename, link or unlink them under
it. qemu-img gets the job's layer as its checked descriptor and opens the
layers below by the names in the headers, but it runs confined to the
checked inodes (confined.py): a name that leads anywhere else, or a header
changed to name a host file or an external data file, is refused by the
kernel. It may write only the layers the job changes.
"""

import contextlib
import json
import os
import struct

from volsep.privileged import audit
from volsep.privileged import contexts
from volsep.privileged import errors
from volsep.privileged import files
from volsep.privileged import image_formats
from volsep.privileged import images
from volsep.privileged import inuse
from volsep.privileged import paths
from volsep.privileged import qemu
from volsep.privileged import validate

LAYER_FORMATS = ('raw', 'qcow2')
MAX_LAYERS = 64
_HEADER = struct.Struct('>4sIQII')
_EXTENSION = struct.Struct('>II')
_BACKING_FORMAT_EXTENSION = 0xE2792ACA
_V2_HEADER_LENGTH = 72
_MAX_BACKING_NAME = 1023   # qemu's own limit


def _unsafe(path, reason):
    return errors.UnsafeImage(f'{path}: {reason}')


def _qcow2_backing(fd, path):
    """(backing file, backing format) as the first cluster states them."""
    _magic, version, bf_offset, bf_size, cluster_bits = _HEADER.unpack(
        os.pread(fd, _HEADER.size, 0))
    first = os.pread(fd, 1 << cluster_bits, 0)
    header_length = (_V2_HEADER_LENGTH if version == 2 else
                     struct.unpack_from('>I', first, 100)[0])
    if not _V2_HEADER_LENGTH <= header_length <= len(first) - 8:
        raise _unsafe(path, f'qcow2 header length {header_length} is out of '
                            f'range')
    backing_format, offset = None, header_length
    while True:
        if offset + _EXTENSION.size > len(first):
            raise _unsafe(path, 'qcow2 header extensions run past the first '
                                'cluster')
        kind, length = _EXTENSION.unpack_from(first, offset)
        if kind == 0:
            break
        data = first[offset + 8:offset + 8 + length]
        if len(data) != length:
            raise _unsafe(path, 'a qcow2 header extension runs past the '
                                'first cluster')
        if kind == _BACKING_FORMAT_EXTENSION:
            backing_format = data.decode('ascii', errors='replace')
        offset += 8 + length + (-length % 8)
    if bf_offset == 0:
        return None, backing_format
    if not 0 < bf_size <= _MAX_BACKING_NAME or \
            bf_offset + bf_size > len(first):
        raise _unsafe(path, 'qcow2 backing file name is out of bounds')
    try:
        backing = first[bf_offset:bf_offset + bf_size].decode('utf-8')
    except UnicodeDecodeError:
        raise _unsafe(path, 'qcow2 backing file name is not UTF-8') from None
    return backing, backing_format


def _describe(fd, st, path, fmt):
    if fmt == 'raw':  # never probed, whatever its first bytes say
        return {'path': path, 'format': 'raw', 'virtual_size': st.st_size,
                'backing': None, 'backing_format': None}
    inspection = images.inspect_fd(fd, 'qcow2', validate.MAX_SIZE,
                                   allow_backing=True)
    backing, backing_format = _qcow2_backing(fd, path)
    return {'path': path, 'format': 'qcow2',
            'virtual_size': inspection.virtual_size, 'backing': backing,
            'backing_format': backing_format}


@contexts.file_ops.entrypoint
@audit.audited
def layer(path, fmt):
    """What one layer's header says: {path, format, virtual_size, backing,
    backing_format}; read with the format its parent recorded."""
    validate.choice(fmt, LAYER_FORMATS, 'layer format')
    with paths.regular_file(path, os.O_RDONLY) as (fd, st):
        return _describe(fd, st, path, fmt)


def _parse(layers):
    # msgpack, under oslo.privsep, may deliver a list as a tuple.
    if type(layers) not in (list, tuple) or \
            not 1 <= len(layers) <= MAX_LAYERS:
        raise errors.InvalidArgument(
            f'a chain is a list of 1 to {MAX_LAYERS} [path, format] pairs')
    parsed = []
    for item in layers:
        if type(item) not in (list, tuple) or len(item) != 2:
            raise errors.InvalidArgument(f'chain layer {item!r} is not a '
                                         f'[path, format] pair')
        path, fmt = item
        paths.split_beneath_root(path)
        parsed.append((path, validate.choice(fmt, LAYER_FORMATS,
                                             'layer format')))
    if len({path for path, _ in parsed}) != len(parsed):
        raise errors.ChainMismatch('a layer appears twice in the chain (a '
                                   'cycle)')
    return parsed


class _Layer:
    def __init__(self, path, fmt, fd, st):
        self.path, self.fmt, self.fd, self.st = path, fmt, fd, st


@contextlib.contextmanager
def _checked(layers):
    """The chain as given, every layer open and held in use (so no
    entrypoint can change it) while its header is checked against the
    chain and for as long as the caller works on it."""
    chain = _parse(layers)
    with contextlib.ExitStack() as stack:
        opened = []
        for path, fmt in chain:
            fd, st = stack.enter_context(paths.regular_file(path,
                                                            os.O_RDONLY))
            inuse.hold(fd, path)
            opened.append(_Layer(path, fmt, fd, st))
        for index, layer in enumerate(opened):
            found = _describe(layer.fd, layer.st, layer.path, layer.fmt)
            expected = chain[index + 1] if index + 1 < len(chain) else \
                (None, None)
            if (found['backing'], found['backing_format']) != expected:
                raise errors.ChainMismatch(
                    f'{layer.path}: its header names backing '
                    f'{found["backing"]!r} ({found["backing_format"]}), not '
                    f'{expected[0]!r} ({expected[1]})')
        yield opened


def _run(argv, opened, target, writable):
    """qemu-img on ``target`` (given as its checked descriptor), able to
    open the chain's checked inodes only, and to write only ``writable``:
    those are taken exclusively first (no other job may be reading what
    this one changes) and handed over writable, the rest read-only."""
    with contextlib.ExitStack() as stack:
        handed = {}
        for layer in writable:
            inuse.claim(layer.fd, layer.path)   # our hold, made exclusive
            fd = paths.reopen(layer.fd, os.O_RDWR)
            stack.callback(os.close, fd)
            handed[layer.fd] = fd
        qemu.run_img(argv + [qemu.fd_path(handed.get(target.fd, target.fd))],
                     target.path,
                     readable=[layer.fd for layer in opened
                               if layer.fd not in handed],
                     writable=sorted(handed.values()))


def _index(value, low, high, name):
    if type(value) is not int or not low <= value <= high:
        raise errors.InvalidArgument(f'{name} must be an integer in '
                                     f'{low}..{high}, not {value!r}')
    return value


def _check_no_shrink(layers):
    """commit grows base to the top's size but never shrinks it: below a
    layer smaller than the one under it (a forced shrink), base's tail
    would show again, so such a range is refused (a pull is safe)."""
    sizes = [_virtual_size(layer) for layer in layers]
    for index in range(len(layers) - 1):
        if sizes[index] < sizes[index + 1]:
            raise errors.InvalidArgument(
                f'{layers[index].path} ({sizes[index]} bytes) is smaller '
                f'than the layer below it ({sizes[index + 1]} bytes): '
                f'committing through it would bring back data a shrink '
                f'removed; pull instead')


@contexts.long_jobs.entrypoint
@audit.audited
def commit(layers, top, base):
    """Offline block-commit: merge layers top..base-1 into base; the layer
    above top is then backed by base. Returns the new chain."""
    with _checked(layers) as chain:
        base = _index(base, 1, len(chain) - 1, 'base')
        top = _index(top, 0, base - 1, 'top')
        _check_no_shrink(chain[top:base + 1])
        _run(['commit', '-q', '-f', 'qcow2', '-t', 'writeback', '-d', '-b',
              chain[base].path], chain, chain[top], chain[top:base + 1])
        os.fsync(chain[base].fd)
        # Until the layer above is rebased, it still reads through the old
        # layers, whose data base now also holds: the content seen from the
        # top is the same at every step.
        if top > 0:
            above = chain[top - 1]
            _run(['rebase', '-q', '-u', '-f', 'qcow2', '-b',
                  chain[base].path, '-F', chain[base].fmt], chain, above,
                 [above])
            os.fsync(above.fd)
        for layer in chain[top:base]:
            files.remove_file(layer.path, held=layer.st)
        return [[layer.path, layer.fmt]
                for layer in chain[:top] + chain[base:]]


@contexts.long_jobs.entrypoint
@audit.audited
def pull(layers, top, base):
    """Offline block-pull: copy into layer top the data of layers
    top+1..base-1, then back it by base (base == len(layers): by nothing,
    a standalone image). Returns the new chain."""
    with _checked(layers) as chain:
        base = _index(base, 1, len(chain), 'base')
        top = _index(top, 0, base - 1, 'top')
        if chain[top].fmt != 'qcow2':
            raise errors.InvalidArgument('only a qcow2 layer can receive '
                                         'data')
        if base == len(chain):
            backing = ['-b', '']
        else:
            backing = ['-b', chain[base].path, '-F', chain[base].fmt]
        # A safe rebase writes every cluster that differs between the old
        # and the new backing into top before switching its header.
        _run(['rebase', '-q', '-f', 'qcow2', '-t', 'writeback', *backing],
             chain, chain[top], [chain[top]])
        os.fsync(chain[top].fd)
        for layer in chain[top + 1:base]:
            files.remove_file(layer.path, held=layer.st)
        return [[layer.path, layer.fmt]
                for layer in chain[:top + 1] + chain[base:]]


# -- whole new layers: revert, import, clone, export -------------------------
#
# Each builds one new image unnamed (O_TMPFILE) beside ``new`` and names it
# only once it is complete and flushed: a crash at any instant leaves either
# no file or the whole image. A new top layer's header names the chain's
# top as its backing file, so the frontend's record (or, after a crash, its
# tidy) can adopt it as the next layer.

def _check_beside(path, layer):
    """A new image of a chain's volume goes in its top layer's directory,
    nowhere else (not into another volume's, nor another pool's)."""
    if os.path.dirname(path) != os.path.dirname(layer.path):
        raise errors.InvalidArgument(
            f'{path} is not beside the chain\'s top layer {layer.path}')


@contextlib.contextmanager
def _unnamed_beside(path, layer, durable=True):
    _check_beside(path, layer)
    with paths.parent_of(path) as (parent, name):
        with paths.anonymous_file(parent, 0o600) as fd:
            yield fd
            if durable:
                os.fsync(fd)
            paths.publish(fd, parent, name, path)
        if durable:
            paths.fsync_directory(parent)


def _create_overlay(fd, below, size, what):
    """Write into the empty file ``fd`` a qcow2 header backed by the
    checked layer ``below``; nothing is opened (-u)."""
    qemu.run_img(['create', '-q', '-f', 'qcow2', '-u', '-b', below.path,
                  '-F', below.fmt, qemu.fd_path(fd), str(size)], what,
                 writable=(fd,))


def _virtual_size(layer):
    return _describe(layer.fd, layer.st, layer.path, layer.fmt)[
        'virtual_size']


def _new_top(chain, new):
    return [[new, 'qcow2']] + [[layer.path, layer.fmt] for layer in chain]


def _fill(chain, fd, new, src_argv, src_fds, size):
    """A new top layer over ``chain`` whose every cluster holds the data
    of the source (``src_argv``: qemu-img's options and name for it), so
    nothing of the old chain shows through: ``convert -n`` into an overlay
    writes zeros explicitly where the source reads as zeros."""
    _create_overlay(fd, chain[0], size, new)
    qemu.run_img(['convert', '-q', '-n', '-t', 'writeback', *src_argv,
                  '-O', 'qcow2', qemu.fd_path(fd)], new,
                 readable=[layer.fd for layer in chain] + list(src_fds),
                 writable=(fd,))


@contexts.long_jobs.entrypoint
@audit.audited
def revert(layers, index, new):
    """A new top layer ``new`` over the chain whose content is the content
    of the chain from layer ``index`` down (a revision), so the state
    reverted from stays in the chain below it. Returns the new chain."""
    with _checked(layers) as chain:
        index = _index(index, 1, len(chain) - 1, 'index')
        target = chain[index]
        with _unnamed_beside(new, chain[0]) as fd:
            # An overlay on the revision reads as the revision; a safe
            # rebase onto the top then writes into it every cluster where
            # the top's view differs, and only then names the top.
            _create_overlay(fd, target, _virtual_size(target), new)
            qemu.run_img(['rebase', '-q', '-f', 'qcow2', '-t', 'writeback',
                          '-b', chain[0].path, '-F', chain[0].fmt,
                          qemu.fd_path(fd)], new,
                         readable=[layer.fd for layer in chain],
                         writable=(fd,))
        return _new_top(chain, new)


def _qemu_virtual_size(fd, fmt, path):
    """The virtual size qemu-img reads (it converts by it), which may
    differ from the inspector's (a VHD's geometry)."""
    out = qemu.run_img(['info', '-f', fmt, '--output=json',
                        qemu.fd_path(fd)], path, readable=(fd,))
    try:
        size = json.loads(out)['virtual-size']
    except (ValueError, TypeError, KeyError):
        raise errors.InvalidImage(f'{path}: qemu-img info gave no virtual '
                                  f'size') from None
    return validate.size(size, 'virtual size')


@contexts.long_jobs.entrypoint
@audit.audited
def import_image(layers, src, src_fmt, new):
    """A new top layer ``new`` over the chain holding all of the image
    ``src`` (declared format; a non-raw one is checked on a private frozen
    copy, as for every import). Returns the new chain."""
    validate.choice(src_fmt, image_formats.FORMATS, 'source format')
    with contextlib.ExitStack() as stack:
        chain = stack.enter_context(_checked(layers))
        _check_beside(src, chain[0])   # the volume's own upload, only
        parent, _ = stack.enter_context(paths.parent_of(new))
        src_fd = stack.enter_context(qemu.frozen_source(src, src_fmt,
                                                        parent))
        fmt = images.qemu_name(src_fmt)
        size = _qemu_virtual_size(src_fd, fmt, src)
        with _unnamed_beside(new, chain[0]) as fd:
            _fill(chain, fd, new, ['-f', fmt, qemu.fd_path(src_fd)],
                  (src_fd,), size)
        return _new_top(chain, new)


@contexts.long_jobs.entrypoint
@audit.audited
def copy_chain(layers, source_layers, new):
    """A new top layer ``new`` over the chain holding the content of
    another checked chain (a clone's source). Returns the new chain."""
    with _checked(layers) as chain, _checked(source_layers) as source:
        with _unnamed_beside(new, chain[0]) as fd:
            _fill(chain, fd, new, ['-f', source[0].fmt,
                                   qemu.fd_path(source[0].fd)],
                  [layer.fd for layer in source], _virtual_size(source[0]))
        return _new_top(chain, new)


@contexts.long_jobs.entrypoint
@audit.audited
def export(layers, fmt, target):
    """The chain's content flattened into a new standalone image
    ``target`` in ``fmt``. Not flushed: a crash loses only the export."""
    validate.choice(fmt, qemu.OUTPUT_FORMATS, 'export format')
    with _checked(layers) as chain, _unnamed_beside(target, chain[0],
                                                    durable=False) as fd:
        qemu.run_img(['convert', '-q', '-U', '-f', chain[0].fmt, '-O', fmt,
                      '-t', 'writeback', qemu.fd_path(chain[0].fd),
                      qemu.fd_path(fd)], target,
                     readable=[layer.fd for layer in chain], writable=(fd,))
