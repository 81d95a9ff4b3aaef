"""Small timing helpers: medians of repeated runs."""

import statistics
import time


def median_seconds(func, repeat, setup=None):
    samples = []
    for _ in range(repeat):
        state = setup() if setup else None
        start = time.perf_counter()
        func(state) if setup else func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def report(label, value, baseline, unit='us'):
    scale = {'us': 1e6, 'ms': 1e3}[unit]
    print(f'  {label:<44} {value * scale:10.1f} {unit}   '
          f'ratio {value / baseline:5.2f}x')


def interleaved_medians(funcs, repeat, block=100):
    """Medians of several functions timed in alternating blocks, so that
    load changes on a shared machine hit all of them alike."""
    samples = [[] for _ in funcs]
    for _ in range(max(1, repeat // block)):
        for func, into in zip(funcs, samples):
            for _ in range(block):
                start = time.perf_counter()
                func()
                into.append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]
