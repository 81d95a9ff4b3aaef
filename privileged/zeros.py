"""Where a buffer is all zeros, so that its writer can leave holes there.

One definition for both directions of a stream: the root side writes
imports with it, the CLI writes exported files with it. Pure: it only
looks at bytes; what to do with a zero run (seek past it, punch it) is
the writer's business.
"""

# Big enough that the per-block loop costs nothing next to the write, small
# enough that a sparse guest disk (4 KiB filesystem blocks, 64 KiB
# clusters) keeps most of its holes.
BLOCK = 64 << 10
_ZEROS = bytes(BLOCK)


def runs(data):
    """Yield (start, end, is_zero) covering ``data`` (bytes) in order;
    neighbouring blocks of the same kind are merged, so a writer makes one
    call per run, not one per block."""
    # startswith compares in place, stopping at the first non-zero byte:
    # dense data costs next to nothing, and nothing is copied (a
    # memoryview compares item by item, about 1 GiB/s).
    return runs_by(len(data), lambda start, end: data.startswith(
        _ZEROS if end - start == BLOCK else _ZEROS[:end - start], start))


def runs_by(length, is_zero):
    """Like runs(), for ``length`` bytes that are not at hand: ``is_zero``
    (start, end) tells whether one block of them is all zeros."""
    run_start, run_zero = 0, None
    for start in range(0, length, BLOCK):
        zero = is_zero(start, min(start + BLOCK, length))
        if zero is not run_zero:
            if run_zero is not None:
                yield run_start, start, run_zero
            run_start, run_zero = start, zero
    if run_zero is not None:
        yield run_start, length, run_zero
