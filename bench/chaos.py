"""The chaos run of tests/test_chaos.py, long: many more kills, more
clients (VOLSEP_CHAOS_KILLS, VOLSEP_CHAOS_SEED)."""

import os
import time

from bench import service
from tests import chaos as chaos_module
from tests import rig

KILLS = int(os.environ.get('VOLSEP_CHAOS_KILLS', '120'))


def chaos():
    # bench/run runs as root: the rig's root calls can run in this process.
    rig.ctx.set_client_mode(False)
    state_dir = f'{service.mount()}/svc-chaos-{os.getpid()}'
    run = chaos_module.Chaos(state_dir, chaos_module.seed_from_environment(),
                             clients=5, say=lambda line: print(f'  {line}'))
    started = time.perf_counter()
    run.run(KILLS)
    print(f'  {time.perf_counter() - started:.0f} s for {KILLS} kills')
