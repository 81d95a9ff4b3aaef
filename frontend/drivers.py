"""Pool drivers found through the `volsep.drivers` entry-point group."""

import stevedore

from volsep.drivers import base
from volsep.drivers import errors

NAMESPACE = 'volsep.drivers'


def available():
    manager = stevedore.ExtensionManager(NAMESPACE)
    return sorted(manager.names())


def load(name):
    if name not in available():
        raise errors.InvalidArgument(
            f'unknown driver {name!r}; available: {", ".join(available())}')
    driver = stevedore.DriverManager(NAMESPACE, name).driver
    if getattr(driver, 'api_version', None) != base.API_VERSION:
        raise errors.StorageError(
            f'driver {name} speaks API version '
            f'{getattr(driver, "api_version", None)}, not {base.API_VERSION}')
    return driver
