"""The `file` driver: sparse, independent copies on any filesystem."""

from volsep.drivers import directory


class FilePool(directory.DirectoryPool):
    driver = 'file'
    clone_mode = 'never'
