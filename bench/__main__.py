"""Run the named benchmarks (default: all) and print their ratios."""

import sys

from bench import chain_operations
from bench import chains
from bench import chaos
from bench import cli_startup
from bench import confinement
from bench import hot_path
from bench import images
from bench import lvm_thin
from bench import privileged_calls
from bench import rbd
from bench import service
from bench import storage

BENCHMARKS = {
    'privsep-noop': privileged_calls.noop,
    'clone': privileged_calls.clone,
    'commit-cycle': storage.cycle,
    'snapshot-start': storage.snapshot_start,
    'streams': service.streams,
    'reflink-import': service.reflink_import,
    'ten-thousand': service.ten_thousand,
    'image-inspection': images.inspection,
    'qcow2-import': images.qcow2_import,
    'chain-validation': chains.validation,
    'chain-merges': chains.merges,
    'qcow2-revert': chain_operations.revert,
    'qcow2-clone': chain_operations.clone,
    'qemu-img-confinement': confinement.qemu_img,
    'api-cycle': hot_path.api_cycle,
    'concurrent-starts': hot_path.concurrent_starts,
    'cli-startup': cli_startup.cli_startup,
    'chaos': chaos.chaos,
    'rbd-snapshot-start': rbd.snapshot_start,
    'rbd-transfers': rbd.transfers,
    'rbd-clone': rbd.clone,
    'lvm-thin-cycle': lvm_thin.cycle,
    'lvm-thin-clone': lvm_thin.clone,
}


def main(names):
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        sys.exit(f'bench: no benchmark named {", ".join(unknown)}; there '
                 f'are: {", ".join(BENCHMARKS)}')
    # The rbd ones need a Ceph cluster and the lvm ones a guest with
    # dm-thin: bench/run provides them when they are named.
    for name in names or [n for n in BENCHMARKS
                          if not n.startswith(('rbd-', 'lvm-'))]:
        print(f'== {name}')
        BENCHMARKS[name]()


if __name__ == '__main__':
    main(sys.argv[1:])
