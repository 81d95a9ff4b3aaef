"""Issue 12, goal 3: `volsep pool list` and `volsep domain start D` each
take at most 150 ms wall-clock, end to end, against a running volsepd.
Timed beside `python3 -c pass` of the same interpreter, the start-up no
command can avoid, in alternating rounds so that load on a shared
machine hits all of them alike."""

import os
import statistics
import subprocess
import sys

from bench import service

AIM_SECONDS = 0.150


def _print(label, seconds, baseline):
    verdict = 'meets' if seconds <= AIM_SECONDS else 'MISSES'
    print(f'  {label:<32} {seconds * 1e3:7.1f} ms   '
          f'{seconds / baseline:5.2f}x interpreter   {verdict} the aim of '
          f'{AIM_SECONDS * 1e3:.0f} ms')


def cli_startup(rounds=25):
    state_dir = f'{service.mount()}/svc-cli-startup'
    os.makedirs(f'{state_dir}/pools', mode=0o755)
    proc, _ = service.start(state_dir)
    volsep = [f'{service.VENV}/volsep', '--socket',
              f'{state_dir}/volsepd.sock']
    try:
        subprocess.run([*volsep, 'volume', 'create', 'vm:root', '--pool',
                        'default', '--size', '64M'], check=True,
                       stdout=subprocess.DEVNULL)
        commands = {
            'python3 -c pass (baseline)': [sys.executable, '-c', 'pass'],
            'volsep pool list': [*volsep, 'pool', 'list'],
            'volsep domain start vm': [*volsep, 'domain', 'start', 'vm'],
            'volsep domain stop vm': [*volsep, 'domain', 'stop', 'vm'],
        }
        samples = {label: [] for label in commands}
        for _ in range(rounds):
            # start and stop alternate, so each start finds vm stopped.
            for label, argv in commands.items():
                samples[label].append(service.timed(argv))
        medians = {label: statistics.median(s)
                   for label, s in samples.items()}
        baseline = medians.pop('python3 -c pass (baseline)')
        print(f'  {"python3 -c pass (baseline)":<32} '
              f'{baseline * 1e3:7.1f} ms   (median of {rounds} runs each)')
        for label, seconds in medians.items():
            _print(label, seconds, baseline)
    finally:
        service.stop(proc)
