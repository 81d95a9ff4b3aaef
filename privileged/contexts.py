"""The two privsep contexts and the capabilities each keeps.

Quick file operations and long jobs (qemu-img convert, commit, rebase) run
in separate daemons with separate thread pools, so a slow convert can never
occupy the thread a rename is waiting for. Neither keeps anything beyond what
file access needs; qemu-img children drop even those (see qemu_exec).
"""

from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

# DAC_OVERRIDE/DAC_READ_SEARCH: reach pool files whatever their modes.
# FOWNER: set modes on files the daemon did not create.
FILE_CAPABILITIES = [caps.CAP_DAC_OVERRIDE, caps.CAP_DAC_READ_SEARCH,
                     caps.CAP_FOWNER]

file_ops = priv_context.PrivContext(
    'volsep',
    cfg_section='volsep_privileged_files',
    pypath=__name__ + '.file_ops',
    capabilities=FILE_CAPABILITIES,
)

long_jobs = priv_context.PrivContext(
    'volsep',
    cfg_section='volsep_privileged_jobs',
    pypath=__name__ + '.long_jobs',
    capabilities=FILE_CAPABILITIES,
)

ALL = (file_ops, long_jobs)

# Worker threads per daemon: enough for the pipelined writes of several
# streams and a few long jobs at once, with one left for the watchdog's
# ping (which goes through the same pool, so a wedged pool is noticed).
THREADS = 16

# Where each context's entrypoints are defined: its daemon serves the
# entrypoints of these modules and refuses every other name (guard.py).
MODULES = {
    'volsep_privileged_files': ('volsep.privileged.files',
                                'volsep.privileged.audit',
                                'volsep.privileged.qemu',
                                'volsep.privileged.chain',
                                'volsep.privileged.rbd',
                                'volsep.privileged.lvm'),
    'volsep_privileged_jobs': ('volsep.privileged.qemu',
                               'volsep.privileged.chain',
                               'volsep.privileged.transfers'),
}
