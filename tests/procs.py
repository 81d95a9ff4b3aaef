"""Reading other processes from /proc: children and status fields."""

import os


def children(pid='self'):
    pids = []
    for task in os.listdir(f'/proc/{pid}/task'):
        with open(f'/proc/{pid}/task/{task}/children') as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def status(pid):
    with open(f'/proc/{pid}/status') as f:
        return dict(line.rstrip('\n').split(':\t', 1) for line in f
                    if ':\t' in line)
