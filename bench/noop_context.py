"""A bare oslo.privsep context with a no-op entrypoint: the baseline."""

from oslo_privsep import priv_context

ctx = priv_context.PrivContext('bench', cfg_section='bench_bare',
                               pypath=__name__ + '.ctx', capabilities=[])


@ctx.entrypoint
def noop():
    return True
