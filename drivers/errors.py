"""Errors of the user-facing contract (INTERFACE.md).

Each carries ``error_class``, the name a client sees. Errors from the root
side carry the same attribute, so the frontend reports both alike.
"""


class VolsepError(Exception):
    error_class = 'StorageError'

    def __init__(self, message):
        super().__init__(message)
        self.message = message


def _error(name):
    return type(name, (VolsepError,), {'error_class': name})


VolumeNotFound = _error('VolumeNotFound')
PoolNotFound = _error('PoolNotFound')
RevisionNotFound = _error('RevisionNotFound')
VolumeBusy = _error('VolumeBusy')
PoolInUse = _error('PoolInUse')
InvalidArgument = _error('InvalidArgument')
PermissionDenied = _error('PermissionDenied')
UnsafeImage = _error('UnsafeImage')
ChainMismatch = _error('ChainMismatch')
StorageError = _error('StorageError')
NotSupported = _error('NotSupported')
# A stream or a handed-over pipe that did not move for stream_timeout.
Timeout = _error('Timeout')


def translated(exc):
    """The contract error for an exception from the root side (which names
    its class in ``error_class``), or None for anything else."""
    name = getattr(exc, 'error_class', None)
    if isinstance(exc, VolsepError) or name is None:
        return None
    cls = globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, VolsepError)):
        cls = StorageError
    return cls(str(exc))
# A host's ownership of a shared (rbd) volume was taken by another host.
OwnershipLost = type('OwnershipLost', (VolumeBusy,),
                     {'error_class': 'VolumeBusy'})
