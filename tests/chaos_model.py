"""What a chaos run's clients were told, and what the disk may therefore
hold: the acknowledged states of each persistent volume, and the rules its
revisions obey.

A persistent volume's state is a pair (committed content, working copy or
None). An acknowledged operation leaves exactly one possible state; one
that a kill cut short adds its outcome as a second possibility, and the
check after the restart must find one of them and settles on it. Contents
are kept as bytes (volumes are a few MiB), so that what an import, a revert
or a guest write should produce is computed, never read back from the
service under test.
"""

import hashlib
import re

_COMMITTED = re.compile(r'c([0-9]+)\.img$')
_REVISION = re.compile(r'r([0-9]+)@[0-9]{8}T[0-9]{6}Z\.img$')
_WORKING = re.compile(r'w(@[0-9]+)?\.img$')
_EXPORT = re.compile(r'x-[0-9a-f]{16}\.img$')


class Violation(AssertionError):
    """An invariant the service broke."""


def digest(data):
    return hashlib.sha256(data).hexdigest()


def written(content, offset, data):
    grown = bytearray(content)
    grown[offset:offset + len(data)] = data
    return bytes(grown)


def resized(content, size):
    return content[:size] + bytes(max(0, size - len(content)))


class PersistentVolume:
    def __init__(self, address, size, revisions_to_keep):
        self.address = address
        self.revisions_to_keep = revisions_to_keep
        self.states = [(bytes(size), None)]
        # Contents that were, or may have been, committed: by digest (all
        # of them, to judge any revision) and as bytes (those a revision or
        # a state still holds, to know what a revert restores).
        self.history = {digest(bytes(size))}
        self.contents = {digest(bytes(size)): bytes(size)}
        self.revisions = {}       # id -> digest when first seen
        self.generations = set()  # every committed or revision id seen
        self.retired = set()      # revision ids seen and since pruned

    # -- what clients were told ---------------------------------------------

    @property
    def state(self):
        if len(self.states) != 1:
            raise RuntimeError(f'{self.address}: unresolved {self.states}')
        return self.states[0]

    def _remember(self, committed):
        self.history.add(digest(committed))
        self.contents[digest(committed)] = committed

    def acknowledged(self, committed, working=None):
        self.states = [(committed, working)]
        self._remember(committed)

    def cut_short(self, committed, working=None):
        """An operation that would have led to this state was killed."""
        self.states.append((committed, working))
        self._remember(committed)

    # -- what the disk shows ------------------------------------------------

    def resolve(self, committed_digest, working_digest):
        """Settle on the one possible state the service shows (working
        digest None: no working copy)."""
        for committed, working in self.states:
            if digest(committed) != committed_digest:
                continue
            if (working is None) != (working_digest is None):
                continue
            if working is not None and digest(working) != working_digest:
                continue
            self.states = [(committed, working)]
            return
        raise Violation(
            f'{self.address}: committed {committed_digest[:12]}, working '
            f'{(working_digest or "none")[:12]} is none of the '
            f'acknowledged states '
            f'{[(digest(c)[:12], w and digest(w)[:12]) for c, w in self.states]}')

    def observe_files(self, entries, listed_ids, running, settled):
        """Check the volume's directory ({name: digest}) and the revision
        ids the service lists; return the committed image's digest. Only
        a service that just started is ``settled``: otherwise the snapshot
        of an export whose last byte was just received may still be there,
        its end not handled yet."""
        committed, revisions, working = {}, {}, []
        for name, file_digest in entries.items():
            if _COMMITTED.match(name):
                committed[int(_COMMITTED.match(name).group(1))] = file_digest
            elif _REVISION.match(name):
                revisions[int(_REVISION.match(name).group(1))] = file_digest
            elif _WORKING.match(name):
                working.append(name)
            elif _EXPORT.match(name) and not settled:
                continue
            else:
                raise Violation(f'{self.address}: leftover {name}')
        if len(committed) != 1:
            raise Violation(f'{self.address}: committed images {committed}')
        if bool(working) != running:
            raise Violation(f'{self.address}: working copies {working} '
                            f'with the domain running={running}')
        if sorted(listed_ids) != sorted(revisions):
            raise Violation(f'{self.address}: lists revisions {listed_ids}, '
                            f'the disk holds {sorted(revisions)}')
        keep = max(self.revisions_to_keep, 0)
        if len(revisions) > keep:
            raise Violation(f'{self.address}: {len(revisions)} revisions, '
                            f'keeps {keep}')
        (generation, committed_digest), = committed.items()
        self._check_ids(generation, revisions)
        for rid, rev_digest in revisions.items():
            first = self.revisions.setdefault(rid, rev_digest)
            if first != rev_digest:
                raise Violation(f'{self.address}: revision {rid} changed')
            if rev_digest not in self.history:
                raise Violation(f'{self.address}: revision {rid} holds '
                                f'content never committed')
        self.retired |= set(self.revisions) - set(revisions)
        for rid in set(self.revisions) - set(revisions):
            del self.revisions[rid]
        self._prune()
        return committed_digest

    def _check_ids(self, generation, revisions):
        ids = {generation} | set(revisions)
        back = ids & self.retired
        if back:
            raise Violation(f'{self.address}: pruned revisions {back} are '
                            f'back')
        new = ids - self.generations
        if new and self.generations and min(new) <= max(self.generations):
            raise Violation(f'{self.address}: new ids {sorted(new)} not '
                            f'above {max(self.generations)}')
        if revisions and generation <= max(revisions):
            raise Violation(f'{self.address}: committed generation '
                            f'{generation} not above revisions '
                            f'{sorted(revisions)}')
        self.generations |= ids

    def _prune(self):
        keep = set(self.revisions.values()) | {
            digest(c) for c, _ in self.states}
        self.contents = {d: c for d, c in self.contents.items() if d in keep}

    def revision_content(self, rid):
        """What reverting to revision ``rid`` (seen by observe_files)
        must commit."""
        try:
            return self.contents[self.revisions[rid]]
        except KeyError:
            raise Violation(f'{self.address}: revision {rid} was not seen '
                            f'with a known content') from None
