"""Opening the device of one of volsep's LVs for an import or an export.

The node is found from the LV's name only, never from a path the frontend
sends, and the descriptor is checked after opening: a block device whose
device-mapper name is the LV's own and whose uuid is LVM's. The check and
every later read or write use that same descriptor, kept open for the
stream (an LV that is open cannot be removed or deactivated under it).
"""

import os
import stat
import threading

from volsep.privileged import errors


def _sysfs(device, leaf):
    path = f'/sys/dev/block/{os.major(device)}:{os.minor(device)}/dm/{leaf}'
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def open_checked(address, writable):
    """An O_CLOEXEC descriptor of the LV ``address`` (an LvAddress)."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
    try:
        fd = os.open(f'/dev/mapper/{address.dm}', flags)
    except FileNotFoundError:
        raise errors.NotFound(f'{address.full} is not active') from None
    except OSError as err:
        raise errors.PrivilegedError(
            f'cannot open {address.full}: {err.strerror}') from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISBLK(st.st_mode) or \
                _sysfs(st.st_rdev, 'name') != address.dm or \
                not (_sysfs(st.st_rdev, 'uuid') or '').startswith('LVM-'):
            raise errors.PathRefused(
                f'/dev/mapper/{address.dm} is not the device of '
                f'{address.full}')
    except BaseException:
        os.close(fd)
        raise
    return fd


class OpenDevices:
    """The descriptors of the streams in progress, by LV address."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open = {}

    def get(self, address, writable):
        with self._lock:
            held = self._open.get(address.text)
            if held is not None and (held[1] or not writable):
                return held[0]
        fd = open_checked(address, writable)
        with self._lock:
            old = self._open.pop(address.text, None)
            self._open[address.text] = (fd, writable)
        if old is not None:
            os.close(old[0])
        return fd

    def close(self, address):
        """Close the LV's descriptor, if any; True if one was open."""
        with self._lock:
            held = self._open.pop(address.text, None)
        if held is not None:
            os.close(held[0])
        return held is not None

    def close_volume(self, address):
        """Close every descriptor of the volume ``address`` belongs to (an
        LV must not be held open while it is renamed or removed)."""
        prefix = address.text.rsplit('/', 1)[0] + '/'
        with self._lock:
            gone = [k for k in self._open if k.startswith(prefix)]
            fds = [self._open.pop(k)[0] for k in gone]
        for fd in fds:
            os.close(fd)


devices = OpenDevices()
