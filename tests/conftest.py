"""Session set-up: the real privilege split, as volsepd does it.

Still root, the test process forks volsep's privileged daemons (and the
tests-only rig), then drops itself to the unprivileged test user for the
whole session. Every test therefore calls the root side across the real
privsep channel from an unprivileged process.
"""

import os
import uuid

import pytest

ROOTS = dict(item.split('=', 1)
             for item in os.environ.get('VOLSEP_TEST_ROOTS', '').split())
REFLINK_FILESYSTEMS = ('xfs', 'btrfs')
# tests/guest needs real device-mapper thin pools, which only the guest
# that tests/guest/run boots has (tests/guest/inside sets VOLSEP_TEST_LVM).
collect_ignore = [] if os.environ.get('VOLSEP_TEST_LVM') else ['guest']


def pytest_configure(config):
    if os.geteuid() != 0 or not ROOTS:
        raise pytest.UsageError(
            'the volsep suite needs root and real filesystems: run it with '
            '"bash tests/run" as root')
    from volsep.frontend import privsep_start

    from tests import rig
    privsep_start.start_daemons()
    rig.ctx.start(rig.priv_context.Method.FORK)
    privsep_start.drop_privileges(os.environ['VOLSEP_TEST_USER'])


def _fresh_dir(root):
    from volsep.privileged import files
    path = f'{root}/t-{uuid.uuid4().hex[:12]}'
    files.mkdir(path)
    return path


@pytest.fixture
def rig():
    from tests import rig as rig_module
    return rig_module


@pytest.fixture(params=sorted(ROOTS))
def any_root(request):
    """A fresh root-owned directory on each filesystem."""
    from tests import rig
    path = _fresh_dir(ROOTS[request.param])
    yield request.param, path
    rig.rmtree(path)


@pytest.fixture
def xfs_dir():
    from tests import rig
    path = _fresh_dir(ROOTS['xfs'])
    yield path
    rig.rmtree(path)


@pytest.fixture
def pool_dir_on():
    """Factory: a fresh root-owned directory on a named filesystem."""
    from tests import rig
    made = []

    def make(fs):
        made.append(_fresh_dir(ROOTS[fs]))
        return made[-1]
    yield make
    for path in made:
        rig.rmtree(path)


@pytest.fixture
def outside_dir():
    """A root-owned directory outside every allowed root, holding a host
    file that no entrypoint may ever read or change."""
    from tests import rig
    path = f'{os.environ["VOLSEP_TEST_WORK"]}/outside-{uuid.uuid4().hex[:8]}'
    rig.mkdir(path)
    rig.write(f'{path}/secret', b'host secret\n' * 100)
    yield path
    rig.rmtree(path)
