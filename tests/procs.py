"""Reading other processes from /proc: children and status fields."""

import os


def children(pid='self'):
    pids = []
    for task in os.listdir(f'/proc/{pid}/task'):
        try:
            with open(f'/proc/{pid}/task/{task}/children') as f:
                pids += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            continue   # a thread that ended since the listing
    return pids


def status(pid):
    with open(f'/proc/{pid}/status') as f:
        return dict(line.rstrip('\n').split(':\t', 1) for line in f
                    if ':\t' in line)
