"""Run a daemon as the child of a subreaper that reaps whatever it
orphans (PID 1 on these hosts reaps slowly); SIGTERM is passed on.
Usage: python3 subreaper.py PROGRAM [ARGS...]"""

import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv):
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0,
                                            0, 0)
    child = os.fork()
    if child == 0:
        os.execv(argv[0], argv)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGTERM))
    code = 1
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return code
        if pid == child:
            code = os.waitstatus_to_exitcode(status)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
