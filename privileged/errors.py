"""Errors raised by the root side.

oslo.privsep rebuilds an exception on the client from its class path and
``args``, so every class here takes exactly one message string. Each names the
error class of the user-facing contract (INTERFACE.md) it stands for, so the
frontend never has to guess.
"""


class PrivilegedError(Exception):
    error_class = 'StorageError'

    def __init__(self, message):
        super().__init__(message)

    @property
    def message(self):
        return self.args[0]


class InvalidArgument(PrivilegedError):
    error_class = 'InvalidArgument'


class PathRefused(PrivilegedError):
    """A path escapes the allowed roots, crosses a symlink or names a special
    file."""

    error_class = 'InvalidArgument'


class NotFound(PrivilegedError):
    error_class = 'StorageError'


class AlreadyExists(PrivilegedError):
    error_class = 'StorageError'


class CloneUnsupported(PrivilegedError):
    """FICLONE was required but the filesystem cannot share extents."""

    error_class = 'StorageError'


class LimitsExceeded(PrivilegedError):
    """qemu-img hit its CPU or address-space limit."""

    error_class = 'UnsafeImage'


class InvalidImage(PrivilegedError):
    error_class = 'UnsafeImage'


class UnsafeImage(PrivilegedError):
    error_class = 'UnsafeImage'


class ChainMismatch(PrivilegedError):
    """A backing chain on disk is not the one the caller described."""

    error_class = 'ChainMismatch'


class ConfigurationError(PrivilegedError):
    error_class = 'StorageError'


class ConfinementFailed(PrivilegedError):
    """A helper could not be confined, so it was not run."""

    error_class = 'StorageError'


class InUse(PrivilegedError):
    """The file is being read or written by a running root job."""

    error_class = 'VolumeBusy'


class UnknownEntrypoint(PrivilegedError):
    """A request named something that is not a volsep entrypoint."""

    error_class = 'PermissionDenied'


class NoSpace(PrivilegedError):
    """The filesystem holding the pool is full."""

    error_class = 'StorageError'


class Stalled(PrivilegedError):
    """The other end of a pipe did not move for the stall timeout."""

    error_class = 'Timeout'
