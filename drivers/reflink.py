"""The `file-reflink` driver: snapshots and commits share extents (FICLONE)
on XFS and btrfs. On a filesystem without reflink it refuses to set up,
unless setup_check=no, when it falls back to sparse copies."""

import dataclasses

from volsep.drivers import base
from volsep.drivers import directory
from volsep.drivers import errors
from volsep.drivers import validation
from volsep.privileged import files


class ReflinkPool(directory.DirectoryPool):
    driver = 'file-reflink'
    capabilities = dataclasses.replace(directory.DirectoryPool.capabilities,
                                       clone_instant=True)
    options = dict(directory.DirectoryPool.options, setup_check=base.Option(
        'refuse a filesystem without reflink (yes) or fall back to sparse '
        'copies (no)', default=True,
        parse=lambda v: validation.boolean(v, 'setup_check')))

    @property
    def clone_mode(self):
        return 'always' if self.options['setup_check'] else 'auto'

    def copy_method(self):
        return ('reflink' if files.reflink_supported(self.dir_path) else
                'copy')

    def check_setup(self):
        if self.options['setup_check'] and not files.reflink_supported(
                self.dir_path):
            raise errors.StorageError(
                f'pool {self.name}: the filesystem of {self.dir_path} cannot '
                f'share extents (FICLONE); use the file driver or '
                f'setup_check=no')
