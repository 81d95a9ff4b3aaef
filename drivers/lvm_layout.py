"""What one thin pool report says about each volume (see
privileged/lvm_names.py for the LV names): its committed generations,
working copy, import target and export snapshot."""

import dataclasses
import time


@dataclasses.dataclass
class Listing:
    generations: dict = dataclasses.field(default_factory=dict)  # N: LV
    working: dict = None
    building: dict = None   # the next generation being built (+t)
    export: dict = None

    @property
    def current(self):
        """(N, LV) of the newest committed generation, or None."""
        if not self.generations:
            return None
        newest = max(self.generations)
        return newest, self.generations[newest]

    @property
    def revisions(self):
        """(N, LV) of the older generations, oldest first."""
        return sorted(self.generations.items())[:-1]

    @property
    def next_generation(self):
        return max(self.generations, default=0) + 1

    @property
    def empty(self):
        return not (self.generations or self.working or self.building or
                    self.export)


def parse(report):
    """{'DOMAIN/VOLUME': Listing} from privileged.lvm.report's 'lvs'."""
    listings = {}
    for lv in report['lvs']:
        listing = listings.setdefault(f'{lv["domain"]}/{lv["volume"]}',
                                      Listing())
        suffix = lv['suffix']
        if suffix.startswith('c'):
            listing.generations[int(suffix[1:])] = lv
        elif suffix == 'w':
            listing.working = lv
        elif suffix == 't':
            listing.building = lv
        else:
            listing.export = lv
    return listings


def timestamp(lv):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(lv['time']))
