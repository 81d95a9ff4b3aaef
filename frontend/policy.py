"""Who may call what, for which domains, and limits per pool.

The rule file is JSON:

    {"rules": [
        {"users": ["root"], "allow": ["*"]},
        {"groups": ["volsep-web"], "domains": ["web-*"],
         "allow": ["admin.vm.*", "admin.pool.List", "admin.pool.Info",
                   "admin.Events"]},
        {"groups": ["volsep-read"], "allow": ["admin.*.List*",
                                              "admin.*.Info"]}],
     "pools": {"default": {"max_volume_size": 10737418240,
                           "import_formats": ["raw"]}}}

The first rule whose "users", "uids" or "groups" match the caller is the
caller's rule, and it alone decides: later rules are never consulted for
that caller. Its "allow" patterns are shell-style globs over method names.
A caller that no rule matches is denied. Without a file, root and the
service's own user may call everything and nobody else anything.

Domain scope. A rule with "domains" (a list of shell-style globs over
domain names) grants its methods only within those domains:

- A request that names domains is allowed only if every domain it names
  matches one of the globs. A request names a domain through its
  parameters "volume" and "source" (DOMAIN:VOLUME addresses), "domain", and
  "domains" (the filter of admin.vm.volume.List); a CloneTo request also
  names the domain of the source behind its token. So a clone, a snapshot
  or a List filter that reaches one foreign domain is refused as a whole.
- admin.vm.volume.List and admin.Events name no domain but are per-domain
  views: they are allowed, and the caller sees only the volumes, and
  receives only the volume-* and domain-* events, of domains in scope
  (pool-* events are not delivered). Listing is filtered, not refused.
- Of the calls that name no domain, a scoped rule grants only the
  read-only pool methods (admin.pool.List, ListDrivers, Info, XML). It
  never grants admin.pool.Add, Remove or Set, nor any other call that
  names no domain, whatever its "allow" says: those act on every domain.

The scope bounds what a request names, not what an administrator set up:
a snapshot in web-1 of a db volume, made by root, still starts with web-1.
First-match stays as it was (a later rule never widens an earlier one's
grant), so one scoped rule carries all of a scoped caller's rights.

A rule without "domains" is unscoped, as before. A rule may carry a
"comment"; any other unknown key (a misspelt "domain", which would leave
the rule unscoped) makes the file invalid, as do wrongly typed values.

Pool limits. "max_volume_size" (bytes) holds together with the pool's own
option of the same name: the smaller wins (see Manager.size_limit). No
operation may make a volume larger than the limit: create, import (the
raw stream, or the virtual size of a non-raw image as qemu-img reads
it), resize, clone (the target takes the source's size), revert (the
restored revision's size) and snapshot creation (the source's size). An
operation that does not make the volume larger than it already is stays
allowed after a limit is lowered (shrinking, clearing, starting). Over
the limit is InvalidArgument, as for any size out of range (PermissionDenied
says the caller may not make the call at all); for a non-raw import it is
UnsafeImage, as for every refused image.
"""

import fnmatch
import json

from volsep.drivers import errors
from volsep.drivers import validation

# Per-domain views: allowed for a scoped caller, then filtered.
SCOPED_VIEWS = frozenset({'admin.vm.volume.List', 'admin.Events'})
# Calls naming no domain that a scoped rule may still grant: they change
# nothing and show nothing of any domain.
SCOPED_GLOBAL_READS = frozenset({'admin.pool.List', 'admin.pool.ListDrivers',
                                 'admin.pool.Info', 'admin.pool.XML'})
_ADDRESS_PARAMS = ('volume', 'source')
_RULE_KEYS = {'users', 'uids', 'groups', 'allow', 'domains', 'comment'}
_POOL_KEYS = {'max_volume_size', 'import_formats'}


def _strings(value):
    return isinstance(value, list) and all(type(x) is str for x in value)


def _domain_of(address):
    if type(address) is not str or address.count(':') != 1:
        raise errors.InvalidArgument(
            f'a volume is addressed as DOMAIN:VOLUME, not {address!r}')
    return validation.name(address.split(':')[0], 'domain')


def named_domains(params, also=()):
    """Every domain a request's parameters name (see the module doc);
    ``also``: addresses the request names indirectly (a clone token's
    source)."""
    found = [_domain_of(params[key]) for key in _ADDRESS_PARAMS
             if key in params and params[key] is not None]
    found += [_domain_of(address) for address in also]
    if params.get('domain') is not None:
        found.append(validation.name(params['domain'], 'domain'))
    filter_ = params.get('domains')
    if filter_:
        if not isinstance(filter_, (list, tuple)):
            raise errors.InvalidArgument('domains must be a list of names')
        found += [validation.name(d, 'domain') for d in filter_]
    return found


class Scope:
    """The domains a scoped caller's rule covers."""

    def __init__(self, patterns):
        self.patterns = tuple(patterns)

    def covers(self, domain):
        return type(domain) is str and any(
            fnmatch.fnmatchcase(domain, p) for p in self.patterns)

    def volumes(self, listing):
        """A volume list cut down to the domains in scope."""
        return [v for v in listing if self.covers(v.get('domain'))]

    def sees_event(self, message):
        """volume-* events name DOMAIN:VOLUME, domain-* events the domain;
        nothing else (pool events) reaches a scoped caller."""
        event, subject = message.get('event', ''), message.get('subject')
        if type(subject) is not str:
            return False
        if event.startswith('volume-'):
            return subject.count(':') == 1 and \
                self.covers(subject.split(':')[0])
        if event.startswith('domain-'):
            return self.covers(subject)
        return False

    def __repr__(self):
        return f'Scope({list(self.patterns)!r})'


class Policy:
    def __init__(self, rules, pools):
        self.rules = rules
        self.pools = pools

    @classmethod
    def default(cls, service_user):
        return cls([{'users': sorted({'root', service_user}),
                     'allow': ['*']}], {})

    @classmethod
    def load(cls, path):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise errors.StorageError(f'policy {path}: {err}') from None
        if not isinstance(data, dict):
            raise errors.StorageError(f'policy {path}: not a JSON object')
        rules = data.get('rules')
        if not isinstance(rules, list) or not all(
                isinstance(r, dict) and _strings(r.get('allow'))
                for r in rules):
            raise errors.StorageError(f'policy {path}: "rules" must be a '
                                      f'list of objects with "allow"')
        for number, rule in enumerate(rules, 1):
            unknown = sorted(set(rule) - _RULE_KEYS)
            if unknown:
                raise errors.StorageError(
                    f'policy {path}: rule {number} has unknown key(s) '
                    f'{", ".join(unknown)}')
            for key in ('users', 'groups', 'domains'):
                if key in rule and not _strings(rule[key]):
                    raise errors.StorageError(
                        f'policy {path}: rule {number}: "{key}" must be a '
                        f'list of strings')
            if 'uids' in rule and not (isinstance(rule['uids'], list) and all(
                    type(u) in (int, str) for u in rule['uids'])):
                raise errors.StorageError(
                    f'policy {path}: rule {number}: "uids" must be a list')
            if 'domains' in rule and not rule['domains']:
                raise errors.StorageError(
                    f'policy {path}: rule {number}: "domains" is empty; '
                    f'leave it out for an unscoped rule')
        pools = data.get('pools', {})
        if not isinstance(pools, dict) or not all(
                isinstance(p, dict) for p in pools.values()):
            raise errors.StorageError(f'policy {path}: "pools" must map '
                                      f'pool names to objects')
        for name, limits in pools.items():
            unknown = sorted(set(limits) - _POOL_KEYS)
            if unknown:
                raise errors.StorageError(
                    f'policy {path}: pool {name} has unknown key(s) '
                    f'{", ".join(unknown)}')
            size = limits.get('max_volume_size')
            if size is not None and (type(size) is not int or size < 0):
                raise errors.StorageError(
                    f'policy {path}: pool {name}: max_volume_size must be '
                    f'a whole number of bytes')
            if 'import_formats' in limits and \
                    not _strings(limits['import_formats']):
                raise errors.StorageError(
                    f'policy {path}: pool {name}: import_formats must be a '
                    f'list of strings')
        return cls(rules, pools)

    def _rule_for(self, peer):
        for rule in self.rules:
            if (peer.user in rule.get('users', ()) or
                    str(peer.uid) in map(str, rule.get('uids', ())) or
                    peer.group_names & set(rule.get('groups', ()))):
                return rule
        return None

    def check(self, peer, method, params=None, also=()):
        """Allow the call or raise PermissionDenied. Returns None for an
        unscoped grant, or the caller's Scope, by which the caller's
        volume list and events must be filtered."""
        rule = self._rule_for(peer)
        who = f'{peer.user} (uid {peer.uid})'
        if not (rule and any(fnmatch.fnmatchcase(method, pattern)
                             for pattern in rule['allow'])):
            raise errors.PermissionDenied(f'{who} may not call {method}')
        if 'domains' not in rule:
            return None
        scope = Scope(rule['domains'])
        named = named_domains(params or {}, also)
        if named:
            outside = sorted({d for d in named if not scope.covers(d)})
            if outside:
                raise errors.PermissionDenied(
                    f'{who} may call {method} only for domains matching '
                    f'{", ".join(scope.patterns)}, not '
                    f'{", ".join(outside)}')
            return scope
        if method in SCOPED_VIEWS or method in SCOPED_GLOBAL_READS:
            return scope
        raise errors.PermissionDenied(
            f'{who} may call {method} only for domains matching '
            f'{", ".join(scope.patterns)}, and this call names no domain')

    def pool_limit(self, pool, key, default=None):
        return self.pools.get(pool, {}).get(key, default)
