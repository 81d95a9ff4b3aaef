"""Who may call what, and limits per pool.

The rule file is JSON:

    {"rules": [
        {"users": ["root"], "allow": ["*"]},
        {"groups": ["volsep-read"], "allow": ["admin.*.List*",
                                              "admin.*.Info"]}],
     "pools": {"default": {"max_volume_size": 10737418240,
                           "import_formats": ["raw"]}}}

The first rule whose users or groups match the caller decides; its
"allow" patterns are shell-style globs over method names. A caller that no
rule matches is denied. Without a file, root and the service's own user
may call everything and nobody else anything.
"""

import fnmatch
import json

from volsep.drivers import errors


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
        rules = data.get('rules')
        if not isinstance(rules, list) or not all(
                isinstance(r, dict) and isinstance(r.get('allow'), list)
                for r in rules):
            raise errors.StorageError(f'policy {path}: "rules" must be a '
                                      f'list of objects with "allow"')
        return cls(rules, data.get('pools', {}))

    def _rule_for(self, peer):
        for rule in self.rules:
            if (peer.user in rule.get('users', ()) or
                    str(peer.uid) in map(str, rule.get('uids', ())) or
                    peer.group_names & set(rule.get('groups', ()))):
                return rule
        return None

    def check(self, peer, method):
        rule = self._rule_for(peer)
        if rule and any(fnmatch.fnmatchcase(method, pattern)
                        for pattern in rule['allow']):
            return
        raise errors.PermissionDenied(
            f'{peer.user} (uid {peer.uid}) may not call {method}')

    def pool_limit(self, pool, key, default=None):
        return self.pools.get(pool, {}).get(key, default)
