"""A hypervisor's view of an rbd volume, for the fencing tests: a Ceph
client of its own (as qemu's librbd is) that opens the image for writing
and writes, then, once GO_FLAG exists, writes again and says how that went.

    python -m tests.rbd_writer CONF CLIENT POOL IMAGE GO_FLAG

Prints "opened", then "second write ok" or "second write failed: ERRNO".
"""

import os
import sys
import time

import rados
import rbd

OP_TIMEOUT = '10'   # a fenced client's write fails, never hangs the test


def main(conf, client, pool, image_name, go_flag):
    cluster = rados.Rados(conffile=conf, rados_id=client)
    cluster.conf_set('rados_osd_op_timeout', OP_TIMEOUT)
    cluster.conf_set('rados_mon_op_timeout', OP_TIMEOUT)
    cluster.connect(timeout=int(OP_TIMEOUT))
    ioctx = cluster.open_ioctx(pool)
    image = rbd.Image(ioctx, image_name)
    image.write(b'Q' * 4096, 0)
    image.flush()
    print('opened', flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(go_flag) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        image.write(b'R' * 4096, 0)
        image.flush()
        print('second write ok', flush=True)
    except (rbd.Error, rados.Error) as err:
        print(f'second write failed: {getattr(err, "errno", err)}',
              flush=True)
    os._exit(0)   # a fenced client's shutdown may wait on the cluster


if __name__ == '__main__':
    main(*sys.argv[1:])
