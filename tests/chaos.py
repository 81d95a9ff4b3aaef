"""Chaos: client threads drive a real volsepd through its API while the
whole service, or one of its root daemons, is SIGKILLed at random moments;
after every restart each invariant is checked (see check_invariants).

Each client thread owns a group of domains (a domain with two persistent
volumes and a volatile one, and a domain with a snapshot of the first
one's root and a volatile volume), so what it was told about them is
never blurred by another client; the groups run concurrently. A seed fixes
every choice (operations, data, kill targets and moments), printed at the
start; VOLSEP_CHAOS_SEED replays it. Thread timing is not replayed, so a
replay meets the same decisions at slightly different instants.

Used by tests/test_chaos.py (short, for CI) and bench/chaos.py (long).
"""

import hashlib
import os
import random
import re
import shutil
import signal
import tempfile
import threading
import time

from tests import chaos_model as model
from tests import procs
from tests import rig
from tests import service_helpers
from volsep.frontend import client as client_module

KiB, MiB = 1 << 10, 1 << 20
SIZE = 1 * MiB
MAX_SIZE = 2 * MiB
TEMPORARY = ('.tmp-', '.state-')
WORKING = re.compile(r'w(@[0-9]+)?\.img$')
TARGETS = ('frontend', 'daemon', 'service')
# A root daemon that died is noticed at the next ping; the timeout stays
# long, a shared 2-core machine must not stop the service by itself.
SERVICE_ARGS = ['--privileged-ping-interval', '0.2',
                '--privileged-ping-timeout', '20']


def seed_from_environment():
    text = os.environ.get('VOLSEP_CHAOS_SEED')
    return int(text) if text else random.SystemRandom().randrange(1 << 32)


def _policy():
    users = sorted({'root', 'volsep', os.environ.get('VOLSEP_TEST_USER',
                                                     'root')})
    return {'rules': [{'users': users, 'allow': ['*']}]}


def _tree(directory):
    """rig.tree, again if a file vanished while it was read (an export
    whose end the service is still handling)."""
    for _ in range(20):
        try:
            return rig.tree(directory)
        except FileNotFoundError:
            time.sleep(0.05)
    return rig.tree(directory)


class _Killed(Exception):
    """An operation the kill cut short."""


class _Sink:
    """A file-like end for an export stream that only hashes it."""

    def __init__(self, digest):
        self.write = digest.update


class Domain:
    def __init__(self, name):
        self.name = name
        self.persistent = {}   # address -> model.PersistentVolume
        self.volatile = []     # addresses
        self.snapshots = {}    # address -> source PersistentVolume
        self.running = {False}  # what it may be: one value, two if unsure
        self.paths = {}        # address -> working copy while running

    @property
    def addresses(self):
        return (list(self.persistent) + self.volatile +
                list(self.snapshots))


class Worker(threading.Thread):
    """One client: random operations on its own domains."""

    def __init__(self, chaos, index, domains):
        super().__init__(name=f'chaos-client-{index}', daemon=True)
        self.chaos = chaos
        self.rng = random.Random(chaos.seed * 1000 + index)
        self.domains = domains
        self.busy = threading.Lock()   # held for one operation
        self.error = None

    def run(self):
        chaos = self.chaos
        try:
            while not chaos.done.is_set():
                if not chaos.up.wait(0.2):
                    continue
                with self.busy:
                    if chaos.up.is_set() and not chaos.done.is_set():
                        self._one_operation()
        except BaseException as err:   # noqa: BLE001 - reported by the run
            self.error = err
            chaos.done.set()

    def _one_operation(self):
        domain = self.rng.choice(self.domains)
        if True in domain.running:
            choices = ['write'] * 4 + ['stop'] * 3 + ['export']
        else:
            choices = (['start'] * 3 + ['export', 'revert', 'import',
                                        'resize'] * bool(domain.persistent))
        operation = self.rng.choice(choices)
        try:
            getattr(self, f'op_{operation}')(domain)
        except (client_module.RemoteError, OSError, ValueError,
                _Killed) as err:
            if not self.chaos.killing:
                raise model.Violation(
                    f'{operation} on {domain.name} failed with the service '
                    f'up: {err}') from err
            self.chaos.count('cut short', operation)
            return
        self.chaos.count('acknowledged', operation)

    # -- operations -----------------------------------------------------------

    def _volume(self, domain):
        return self.rng.choice(sorted(domain.persistent.values(),
                                      key=lambda v: v.address))

    def op_start(self, domain):
        presented = {a: v.state[0] for a, v in domain.persistent.items()}
        presented.update({a: source.state[0] for a, source in
                          domain.snapshots.items()})
        presented.update({a: bytes(SIZE) for a in domain.volatile})
        for address, volume in domain.persistent.items():
            volume.cut_short(presented[address], presented[address])
        domain.running = {False, True}
        started = self.chaos.call('admin.vm.Start', domain=domain.name)
        domain.running = {True}
        for address, volume in domain.persistent.items():
            volume.acknowledged(presented[address], presented[address])
        for disk in started:
            address = f'{domain.name}:{disk["volume"]}'
            domain.paths[address] = disk['path']
            # A start presents the committed content (a snapshot: its
            # source's), a volatile volume only zeros.
            expected = presented[address]
            self.chaos.expect(rig.sha256(disk['path']) ==
                              model.digest(expected),
                              f'{address} started with other content')

    def op_write(self, domain):
        address = self.rng.choice(domain.addresses)
        path = domain.paths[address]
        volume = domain.persistent.get(address)
        size = len(volume.state[1]) if volume else SIZE
        length = self.rng.choice([512, 4 * KiB, 64 * KiB])
        offset = self.rng.randrange(0, size - length + 1, 512)
        data = self.rng.randbytes(length)
        rig.pwrite(path, offset, data)   # as the guest would, fsynced
        if volume:
            committed, working = volume.state
            volume.acknowledged(committed, model.written(working, offset,
                                                         data))

    def op_stop(self, domain):
        for volume in domain.persistent.values():
            volume.cut_short(volume.state[1])
        domain.running = {True, False}
        self.chaos.call('admin.vm.Stop', domain=domain.name)
        domain.running = {False}
        domain.paths = {}
        for volume in domain.persistent.values():
            volume.acknowledged(volume.states[-1][0])
            self.chaos.observe(volume, running=False)

    def op_export(self, domain):
        volume = self._volume(domain) if domain.persistent else None
        if volume is None:
            return
        found = self.chaos.export_digest(volume.address)
        self.chaos.expect(found == model.digest(volume.state[0]),
                          f'{volume.address}: export is not the committed '
                          f'content')

    def op_revert(self, domain):
        volume = self._volume(domain)
        self.chaos.observe(volume, running=False)
        if not volume.revisions:
            return
        rid = max(volume.revisions)
        restored = volume.revision_content(rid)
        volume.cut_short(restored)
        self.chaos.call('admin.vm.volume.Revert', volume=volume.address)
        volume.acknowledged(restored)
        self.chaos.observe(volume, running=False)

    def _new_size(self, volume):
        return min(MAX_SIZE, len(volume.state[0]) +
                   self.rng.choice([0, 64 * KiB, 256 * KiB]))

    def op_resize(self, domain):
        volume = self._volume(domain)
        size = self._new_size(volume)
        grown = model.resized(volume.state[0], size)
        volume.cut_short(grown)
        self.chaos.call('admin.vm.volume.Resize', volume=volume.address,
                        size=size)
        volume.acknowledged(grown)
        self.chaos.observe(volume, running=False)

    def op_import(self, domain):
        """Through the CLI, from a pipe with --size or from a file."""
        volume = self._volume(domain)
        data = self.rng.randbytes(self._new_size(volume))
        volume.cut_short(data)
        if self.rng.random() < 0.5:
            args, stdin = ['-', '--size', str(len(data))], data
        else:
            path = os.path.join(self.chaos.scratch, f'{self.name}.raw')
            with open(path, 'wb') as f:
                f.write(data)
            args, stdin = [path], None
        rc, out, err = self.chaos.service.cli(
            'volume', 'import', volume.address, *args, input_data=stdin)
        if rc != 0:
            raise _Killed(f'import: exit {rc}: {err.strip()}')
        volume.acknowledged(data)
        self.chaos.observe(volume, running=False)


class Chaos:
    def __init__(self, state_dir, seed, clients=3, say=print):
        self.state_dir = state_dir
        self.pool_dir = f'{state_dir}/pools/default'
        self.seed = seed
        self.rng = random.Random(seed)
        self.say = say
        self.service = service_helpers.Service(
            state_dir, policy=_policy(), extra_args=SERVICE_ARGS)
        self.scratch = tempfile.mkdtemp(prefix='volsep-chaos-')
        self.up = threading.Event()
        self.done = threading.Event()
        self.killing = False
        self.counts = {}
        self.counts_lock = threading.Lock()
        self.domains = []
        self.clients = [Worker(self, i, self._make_group(i))
                        for i in range(clients)]

    # -- bookkeeping --------------------------------------------------------

    def count(self, *key):
        with self.counts_lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def total(self, kind):
        return sum(n for key, n in self.counts.items() if key[0] == kind)

    def expect(self, condition, what):
        self.count('check')
        if not condition:
            raise model.Violation(what)

    def summary(self):
        by = {}
        for key, n in sorted(self.counts.items()):
            if key[0] in ('acknowledged', 'cut short', 'kill'):
                by.setdefault(key[0], []).append(f'{key[1]} {n}')
        return (f'seed {self.seed}: {self.total("kill")} kills '
                f'({", ".join(by.get("kill", []))}), '
                f'{self.total("acknowledged")} operations acknowledged '
                f'({", ".join(by.get("acknowledged", []))}), '
                f'{self.total("cut short")} cut short, '
                f'{self.total("check")} invariant checks passed')

    # -- talking to the service -------------------------------------------

    def call(self, method, **params):
        client = client_module.Client(self.service.socket)
        client.sock.settimeout(120)
        try:
            return client.call(method, **params)
        finally:
            client.close()

    def export_digest(self, address):
        digest = hashlib.sha256()
        client = client_module.Client(self.service.socket)
        client.sock.settimeout(120)
        try:
            client.export_stream(address, _Sink(digest))
        finally:
            client.close()
        return digest.hexdigest()

    def observe(self, volume, running, settled=False):
        """The volume's files against what it was told (chaos_model)."""
        domain, name = volume.address.split(':')
        directory = f'{self.pool_dir}/{domain}/{name}'
        entries = {path: entry[4] for path, entry in
                   _tree(directory).items()}
        ids = [r['id'] for r in self.call('admin.vm.volume.ListSnapshots',
                                          volume=volume.address)]
        self.count('check')
        return volume.observe_files(entries, ids, running, settled)

    # -- set-up ---------------------------------------------------------------

    def _make_group(self, index):
        vm, snap = Domain(f'vm{index}'), Domain(f'snap{index}')
        for name in ('root', 'data'):
            address = f'{vm.name}:{name}'
            vm.persistent[address] = model.PersistentVolume(
                address, SIZE, self.rng.choice([1, 2]))
        vm.volatile.append(f'{vm.name}:tmp')
        snap.snapshots[f'{snap.name}:root'] = vm.persistent[f'{vm.name}:root']
        snap.volatile.append(f'{snap.name}:scratch')
        self.domains += [vm, snap]
        return [vm, snap]

    def _create_volumes(self):
        for domain in self.domains:
            for address, volume in domain.persistent.items():
                self.call('admin.vm.volume.Create', volume=address,
                          pool='default', size=SIZE,
                          revisions_to_keep=volume.revisions_to_keep)
            for address in domain.volatile:
                self.call('admin.vm.volume.Create', volume=address,
                          pool='default', size=SIZE, kind='volatile')
            for address, source in domain.snapshots.items():
                self.call('admin.vm.volume.Create', volume=address,
                          pool='default', kind='snapshot',
                          source=source.address)

    # -- kills ----------------------------------------------------------------

    def _kill(self, target):
        """SIGKILL the frontend, one root daemon, or all of them at once;
        return once every process of the service is gone."""
        frontend = self.service.pid
        daemons = procs.children(frontend)
        victims = {'frontend': [frontend],
                   'daemon': [self.rng.choice(daemons)],
                   'service': [frontend] + daemons}[target]
        self.killing = True
        self.up.clear()
        for pid in victims:
            rig.kill(pid, signal.SIGKILL)
        self.count('kill', target)
        try:
            status = rig.wait(frontend, 60)
        except Exception:   # subprocess.TimeoutExpired, rebuilt by the rig
            self.service.stop(signal.SIGKILL)
            raise model.Violation(f'volsepd did not exit within 60 s of a '
                                  f'{target} kill') from None
        self.service.pid = None
        self.expect(target == 'daemon' and status == 1 or status == -9,
                    f'volsepd ended with {status} after a {target} kill')
        deadline = time.monotonic() + 30
        while any(os.path.exists(f'/proc/{pid}') for pid in daemons):
            if time.monotonic() > deadline:
                raise model.Violation('a root daemon outlived volsepd')
            time.sleep(0.05)

    def _restart(self):
        """Start the service with every client parked: their state is
        what they were last told."""
        for client in self.clients:
            client.busy.acquire()
        try:
            self.service.start()
            self.killing = False
            self.check_invariants()
        finally:
            for client in self.clients:
                client.busy.release()
        self.up.set()

    # -- invariants -------------------------------------------------------

    def check_invariants(self):
        tree = _tree(self.state_dir)
        for path in tree:
            base = os.path.basename(path)
            self.expect(not base.startswith(TEMPORARY),
                        f'temporary file {path} survived start-up')
        marks = {os.path.basename(p): rig.read(f'{self.state_dir}/{p}')
                 for p in tree if p.startswith('state/running/')}
        self._check_pool_names(tree)
        for domain in self.domains:
            self._check_domain(domain, marks.get(domain.name), tree)
        verdict = self.call('admin.audit.Verify')
        self.expect(verdict['ok'], f'audit verify: {verdict}')

    def _check_pool_names(self, tree):
        """Every domain and volume directory is one the service made."""
        known = {d.name: {a.split(':')[1] for a in d.addresses}
                 for d in self.domains}
        for path in tree:
            if not path.startswith('pools/default/'):
                continue
            parts = path.split('/')[2:]
            self.expect(parts[0] in known and (
                len(parts) == 1 or parts[1] in known[parts[0]]),
                f'pool holds {path}, which no volume owns')

    def _check_domain(self, domain, mark, tree):
        infos = {a: self.call('admin.vm.volume.Info', volume=a)
                 for a in domain.addresses}
        running = {info['running'] for info in infos.values()}
        self.expect(len(running) == 1, f'{domain.name}: running {infos}')
        running, = running
        self.expect(running in domain.running,
                    f'{domain.name}: running={running}, told '
                    f'{domain.running}')
        self.expect(mark == (b'running\n' if running else None),
                    f'{domain.name}: running={running} with mark {mark!r}')
        domain.running = {running}
        for address, info in infos.items():
            self.expect((info['path'] is not None) == running or
                        address in domain.persistent,
                        f'{address}: path {info["path"]}, '
                        f'running={running}')
        domain.paths = {a: i['path'] for a, i in infos.items()} \
            if running else {}
        for address in domain.volatile + list(domain.snapshots):
            directory = 'pools/default/' + address.replace(':', '/') + '/'
            names = [p[len(directory):] for p in tree
                     if p.startswith(directory)]
            self.expect(all(WORKING.match(n) for n in names) and
                        len(names) == running,
                        f'{address}: holds {names}, running={running}')
        for address, volume in domain.persistent.items():
            self.expect(not running or infos[address]['path'],
                        f'{address}: running with no path')
            committed = self.observe(volume, running, settled=True)
            self.expect(self.export_digest(address) == committed,
                        f'{address}: export differs from the committed '
                        f'image')
            working = rig.sha256(infos[address]['path']) if running \
                else None
            volume.resolve(committed, working)
            self.expect(infos[address]['size'] ==
                        len(volume.state[1] if running else volume.state[0]),
                        f'{address}: size {infos[address]["size"]}')

    # -- the run --------------------------------------------------------------

    def run(self, kills, pause=(0.5, 3.0)):
        """Set up, then ``kills`` times: let the clients work for a random
        moment, kill, restart, check. Raises the first violation."""
        self.say(f'chaos: seed {self.seed} (replay with '
                 f'VOLSEP_CHAOS_SEED={self.seed}), {len(self.clients)} '
                 f'clients, {sum(len(d.addresses) for d in self.domains)} '
                 f'volumes, {kills} kills')
        self.service.start()
        try:
            self._create_volumes()
            self.check_invariants()
            self.up.set()
            for client in self.clients:
                client.start()
            for number in range(kills):
                if self.done.wait(self.rng.uniform(*pause)):
                    break
                self._kill(TARGETS[number % len(TARGETS)])
                self._restart()
            self.done.set()
            for client in self.clients:
                client.join(120)
            for client in self.clients:
                if client.error is not None:
                    raise client.error
            self.check_invariants()
        except BaseException as err:
            self.done.set()
            self.say(f'chaos: FAILED with seed {self.seed} (replay with '
                     f'VOLSEP_CHAOS_SEED={self.seed}): {err}\n'
                     f'{self.service.output()[-3000:]}')
            raise
        finally:
            if self.service.pid is not None:
                self.service.stop()
            shutil.rmtree(self.scratch)
        self.say(f'chaos: {self.summary()}')
        return self.counts
