"""The one place IPv6 stops: the core computes both families, the data plane programs IPv4 only.

The tracker's state holds IPv6 frontends, service ids and backend lists (issue 19); the writer's maps
have 4-byte addresses. `Ipv4Only` hands the writer the IPv4 part of a state and of a sync's changes,
logs each service with IPv6 frontends once, and counts them for the metrics and the tests. A state
without IPv6 (every IPv4-only cluster) goes through untouched: the same objects, nothing copied.
"""
import dataclasses
import logging

from ebpflb.core.model import DesiredState
from ebpflb.core.tracker import Changes

log = logging.getLogger(__name__)


class Ipv4Only:
    def __init__(self):
        self.unprogrammed_frontends = 0     # IPv6 frontends the last sync left out
        self.unprogrammed_services: set[tuple[str, str]] = set()   # (namespace, name) of those with some
        self._logged: set[tuple[str, str]] = set()

    def __call__(self, state: DesiredState, changes: Changes) -> tuple[DesiredState, Changes]:
        # IPv6 frontends come only with an IPv6 cluster IP; the changes name IPv6 ones also after the
        # last IPv6 service left
        if not any(":" in ip for ip in state.service_ips):
            self.unprogrammed_frontends = 0
            self.unprogrammed_services = self._logged = set()
            if not any(k.family == 6 for k in changes.frontends) and not any(":" in ip for ip in changes.service_ips):
                return state, changes
            return state, dataclasses.replace(changes, frontends={k for k in changes.frontends if k.family == 4},
                                              service_ips={ip for ip in changes.service_ips if ":" not in ip})
        v6_ids = {i for name, i in state.ids.items() if name.family == 6}
        services = {(name.namespace, name.name) for name in state.ids if name.family == 6}
        self.unprogrammed_frontends = sum(1 for key in state.frontends if key.family == 6)
        self.unprogrammed_services = services
        for namespace, name in sorted(services - self._logged):
            log.info("service %s/%s: IPv6 frontends are computed but not yet programmed", namespace, name)
        self._logged = services   # a service that leaves and comes back is logged again
        v4_state = dataclasses.replace(
            state,
            frontends={k: f for k, f in state.frontends.items() if k.family == 4},
            backends={i: b for i, b in state.backends.items() if i not in v6_ids},
            service_ips=frozenset(ip for ip in state.service_ips if ":" not in ip),
            ids={n: i for n, i in state.ids.items() if n.family == 4},
            src_ranges={i: r for i, r in state.src_ranges.items() if i not in v6_ids},
            affinity={i: t for i, t in state.affinity.items() if i not in v6_ids})
        v4_changes = dataclasses.replace(
            changes,
            ids={i for i in changes.ids if i not in v6_ids},
            frontends={k for k in changes.frontends if k.family == 4},
            service_ips={ip for ip in changes.service_ips if ":" not in ip},
            src_range_ids={i for i in changes.src_range_ids if i not in v6_ids})
        return v4_state, v4_changes
