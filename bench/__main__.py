"""Run the named benchmarks (default: all) and print their ratios."""

import sys

from bench import privileged_calls

BENCHMARKS = {
    'privsep-noop': privileged_calls.noop,
    'clone': privileged_calls.clone,
}


def main(names):
    for name in names or BENCHMARKS:
        print(f'== {name}')
        BENCHMARKS[name]()


if __name__ == '__main__':
    main(sys.argv[1:])
