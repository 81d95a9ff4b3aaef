"""Random SIGKILLs of volsepd, of one root daemon, or of all of them, under
concurrent load, with every invariant checked after each restart
(tests/chaos.py). The seed is printed; VOLSEP_CHAOS_SEED replays it. A
longer run: bash bench/run chaos."""

import os

from tests import chaos
from tests import service_helpers

KILLS = int(os.environ.get('VOLSEP_CHAOS_KILLS', '9'))


def test_random_kills_under_load_lose_no_acknowledged_state(rig):
    state_dir = service_helpers.fresh_state_dir()
    run = chaos.Chaos(state_dir, chaos.seed_from_environment())
    try:
        counts = run.run(KILLS)
    finally:
        rig.rmtree(state_dir)
    # Every kind of kill happened, and each interrupted real work.
    assert {key[1] for key in counts if key[0] == 'kill'} == \
        set(chaos.TARGETS), run.summary()
    assert run.total('acknowledged') >= 3 * KILLS, run.summary()
