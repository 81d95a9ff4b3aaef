"""Who is on the other end of a unix socket: SO_PEERCRED and
SO_PEERGROUPS, both fixed by the kernel at connect time."""

import dataclasses
import functools
import grp
import pwd
import socket
import struct

_SO_PEERGROUPS = 59


@dataclasses.dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: tuple

    # Looked up once per connection: each lookup reads the user and group
    # databases, and the policy asks on every request.
    @functools.cached_property
    def user(self):
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    @functools.cached_property
    def group_names(self):
        names = set()
        for gid in (self.gid,) + self.groups:
            try:
                names.add(grp.getgrgid(gid).gr_name)
            except KeyError:
                names.add(str(gid))
        return names


def of(sock):
    pid, uid, gid = struct.unpack(
        '3i', sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                              struct.calcsize('3i')))
    raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * 256)
    groups = struct.unpack(f'{len(raw) // 4}I', raw)
    return Peer(pid, uid, gid, tuple(groups))
