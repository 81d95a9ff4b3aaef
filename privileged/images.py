"""What an untrusted image must be before qemu-img may open it.

oslo.utils' format_inspector parses the headers; this module decides. The
frontend feeds an import stream through an ImageCheck as it arrives and
refuses early; the privileged qemu entrypoints repeat the same check on the
very descriptor they hand to qemu-img, so a compromised frontend cannot get
a crafted file converted either.

The rules: every known inspector sees the content (not only the declared
one), exactly one non-raw format may match and it must be the declared one,
its safety checks must pass (no backing file, no external data file, only
self-contained VMDK subformats), its virtual size must be within the limit,
and its metadata tables must fit in memory that qemu-img may use. Raw is
never probed: raw content is bytes, whatever headers it contains.
"""

import dataclasses
import errno
import logging
import os
import struct

from oslo_utils.imageutils import format_inspector

from volsep.privileged import errors
from volsep.privileged import image_formats

# qemu-img's names of formats where they differ: it calls VHD "vpc".
QEMU_NAMES = {'vhd': 'vpc'}
# The L1 and refcount tables qemu-img loads whole: 32 MiB each is qemu's own
# ceiling, far above what a 1 PiB image with 64 KiB clusters needs.
METADATA_LIMIT = 32 << 20
_QCOW2_HEADER = struct.Struct('>4sIQIIQIIQQIIQ')
_READ_CHUNK = 1 << 20
# Its warnings repeat what UnsafeImage says (and a chain layer's allowed
# backing file is not worth one).
logging.getLogger(format_inspector.__name__).setLevel(logging.ERROR)
# An inspector only captures regions it knew of before a chunk plus those
# the chunk revealed, not regions revealed by those (VHDX: region table ->
# metadata region -> entries): small pieces keep each step in a later one.
_PIECE = 64 << 10
# What is still fed of a hole passed over (ImageCheck.skip_zeros): more
# than any region kept from the end of a file.
SKIP_KEEP = 64 << 10


def qemu_name(fmt):
    return QEMU_NAMES.get(fmt, fmt)


@dataclasses.dataclass(frozen=True)
class Inspection:
    format: str
    virtual_size: int


def _refuse(reason):
    return errors.UnsafeImage(f'unsafe image: {reason}')


def _qcow2_tables(header):
    (_magic, _version, _bf_offset, _bf_size, cluster_bits, _size,
     crypt_method, l1_size, _l1_offset, _rt_offset, rt_clusters,
     _snapshots, _snapshots_offset) = _QCOW2_HEADER.unpack_from(header)
    if not 9 <= cluster_bits <= 21:
        raise _refuse(f'qcow2 cluster size 2^{cluster_bits} is out of range')
    if crypt_method != 0:
        raise _refuse('encrypted qcow2 images are not accepted')
    if l1_size * 8 > METADATA_LIMIT:
        raise _refuse(f'qcow2 L1 table of {l1_size * 8} bytes exceeds '
                      f'{METADATA_LIMIT}')
    if rt_clusters << cluster_bits > METADATA_LIMIT:
        raise _refuse(f'qcow2 refcount table of '
                      f'{rt_clusters << cluster_bits} bytes exceeds '
                      f'{METADATA_LIMIT}')


class ImageCheck:
    """Feed the content in order with feed(); conclude() gives the
    Inspection or raises UnsafeImage. ``settled`` turns true once every
    inspector has seen all it needs, after which feeding is pointless and
    verdict() already holds (a streamOptimized VMDK, whose footer is at the
    end, settles only at conclude())."""

    def __init__(self, declared, max_virtual_size, allow_backing=False):
        if declared not in image_formats.FORMATS or declared == 'raw':
            raise errors.InvalidArgument(
                f'cannot inspect format {declared!r}; one of '
                f'{", ".join(image_formats.FORMATS[1:])}')
        self.declared = declared
        self.max_virtual_size = max_virtual_size
        # Only for layers of a pool's own chain, whose backing files the
        # chain checks verify one by one (chain.py).
        self.allow_backing = allow_backing
        self._inspectors = [cls() for name, cls in
                            format_inspector.ALL_FORMATS.items()
                            if name != 'raw']
        self._failed = set()
        self._finished = False

    def _live(self):
        return [i for i in self._inspectors if i not in self._failed]

    @property
    def settled(self):
        return all(i.complete for i in self._live())

    def feed(self, chunk):
        for start in range(0, len(chunk), _PIECE):
            self._eat(chunk[start:start + _PIECE])

    def _eat(self, piece):
        for inspector in self._live():
            try:
                inspector.eat_chunk(piece)
            except Exception as err:  # noqa: BLE001 - a parser's refusal
                if inspector.NAME == self.declared:
                    raise _refuse(f'not a valid {self.declared} image: '
                                  f'{err}') from None
                self._failed.add(inspector)

    def verdict(self):
        matches = [i for i in self._live() if i.format_match]
        names = sorted(i.NAME for i in matches)
        if len(matches) > 1:
            raise _refuse(f'content matches several formats: '
                          f'{", ".join(names)}')
        if names != [self.declared]:
            found = names[0] if names else 'raw (no known header)'
            raise _refuse(f'content is {found}, not the declared '
                          f'{self.declared}')
        inspector = matches[0]
        try:
            inspector.safety_check()
        except format_inspector.SafetyCheckFailed as err:
            failures = {name: why for name, why in err.failures.items()
                        if not (self.allow_backing and
                                name == 'backing_file')}
            if failures:
                reasons = '; '.join(f'{name}: {why}'
                                    for name, why in failures.items())
                raise _refuse(f'{self.declared} safety check failed: '
                              f'{reasons}') from None
        if self.declared == 'qcow2':
            _qcow2_tables(inspector.region('header').data)
        size = inspector.virtual_size
        if size <= 0:
            raise _refuse(f'{self.declared} image has no usable virtual size')
        if size > self.max_virtual_size:
            raise _refuse(f'virtual size {size} exceeds the limit of '
                          f'{self.max_virtual_size} bytes')
        return Inspection(self.declared, size)

    def skip_zeros(self, length):
        """Account for ``length`` zero bytes (a hole of the file being
        inspected) without handing them over piece by piece, if that cannot
        change what any inspector sees: none still captures a region in
        them, except the trailing regions that keep the last bytes of the
        file, which the caller refills by feeding at least SKIP_KEEP more
        bytes. Returns whether they were skipped (if not, feed them)."""
        live = self._live()
        for inspector in live:
            regions = getattr(inspector, '_capture_regions', None)
            position = getattr(inspector, '_total_count', None)
            if type(regions) is not dict or type(position) is not int:
                return False
            for region in regions.values():
                if isinstance(region, format_inspector.EndCaptureRegion):
                    if region.length > SKIP_KEEP:
                        return False
                    continue
                if region.complete:
                    continue    # captures nothing more
                # As CaptureRegion.capture decides, bounds included.
                if region.offset <= position + length and \
                        region.offset + region.length >= position:
                    return False
        for inspector in live:
            inspector._total_count += length
        return True

    def conclude(self):
        if not self._finished:
            self._finished = True
            for inspector in self._live():
                inspector.finish()
        return self.verdict()


def _next_data(fd, offset, end):
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as err:
        if err.errno == errno.ENXIO:   # only a hole up to the end
            return end
        return offset


def inspect_fd(fd, declared, max_virtual_size, allow_backing=False):
    """Check an open file from its start; reads only as far as the
    inspectors need. Holes that no inspector wants are passed over, not
    read: a sparse file whose format keeps its footer at the end (a
    streamOptimized VMDK) would otherwise cost seconds per GiB of holes,
    as many as its owner likes."""
    check = ImageCheck(declared, max_virtual_size, allow_backing)
    offset = 0
    end = os.fstat(fd).st_size
    while not check.settled:
        if offset < end:
            hole = _next_data(fd, offset, end) - offset - SKIP_KEEP
            if hole >= SKIP_KEEP and check.skip_zeros(hole):
                offset += hole
        chunk = os.pread(fd, _READ_CHUNK, offset)
        if not chunk:
            break
        check.feed(chunk)
        offset += len(chunk)
    return check.conclude()
