"""Services and EndpointSlices, as the Kubernetes API gives them, in; the desired map contents out.

Each object is read once into a compact form (parse_service, parse_slice) that keeps only what the
maps need: the tracker keeps those between changes instead of whole API objects (a tenth of the
memory at 10k services).

Pure: nothing is read, logged or kept between calls. A malformed object is skipped whole and
reported in `DesiredState.rejected`; no object shape makes this module raise (malformed node
addresses or --nodeport-addresses CIDRs, the agent's own configuration, raise ValueError). So is a
service that names a frontend another one holds, or that the maps cannot hold beside the others.

Address families: each family of a Service (its clusterIPs) is served on its own, as kube-proxy's
proxier per family does: a service port gets a service id per family (ServicePortName.family), with
the frontends of that family (cluster IPs, node addresses, externalIPs, LoadBalancer IPs), the
endpoints of the EndpointSlices of that addressType, and the loadBalancerSourceRanges of that
family. One family may have endpoints while the other has none. Both are computed; sync/family.py
keeps IPv6 from the IPv4-only data plane for now.

Traffic from outside (NodePort on the node's addresses, spec.externalIPs, LoadBalancer ingress IPs)
gets frontends flagged NAT_FLG_EXTERNAL that share the service port's id and backend list with its
ClusterIP frontends.

Topology (kube-proxy's CategorizeEndpoints): EndpointSlice hints narrow a service port's cluster set
to the endpoints hinted for this node (`forNodes`, trafficDistribution PreferSameNode) or its zone
(`forZones`: PreferClose, PreferSameZone, the topology-mode annotation), when every ready endpoint
has such hints and some name this node or zone; otherwise every endpoint serves. Like kube-proxy
since the hints went GA, only the hints decide: the Service's trafficDistribution and annotation are
what the EndpointSlice controller reads to write them. Local sets (traffic policy Local) ignore
topology.
"""
import functools
import ipaddress
import itertools
import operator
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ebpflb.datapath.structs import C

from ebpflb.core.ids import owner_tag
from ebpflb.core.model import (Backend, DesiredState, Frontend, FrontendKey, HealthCheck, Rejected, ServicePortName,
                               family_of)

PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"
PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
ZONE_LABEL = "topology.kubernetes.io/zone"   # a Node's zone, which forZones hints name
AFFINITY_TYPES = ("None", "ClientIP")
AFFINITY_DEFAULT_TIMEOUT_S = 10800           # the API's default for sessionAffinityConfig.clientIP
AFFINITY_MAX_TIMEOUT_S = 86400               # the API's limit
NODE_PORT_TYPES = ("NodePort", "LoadBalancer")
SERVICE_TYPES = ("ClusterIP", *NODE_PORT_TYPES, "ExternalName")
TRAFFIC_POLICIES = ("Cluster", "Local")
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
IP_FAMILIES = {"IPv4": 4, "IPv6": 6}
IP_FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
_NO_EXTERNAL: dict = {}   # shared, never written: what a port without external frontends gets
_NO_RANGES: frozenset = frozenset()   # shared: each frozenset() is a new 216-byte object


class Usage(NamedTuple):
    """Entries taken in the maps the programs read: by a whole state, or needed by one service."""
    frontends: int = 0
    backends: int = 0
    service_ips: int = 0
    src_ranges: int = 0


# The default sizes (bpf/structs.h); the agent passes the real maps' (--frontend-map-max, ...).
MAP_CAPACITY = Usage(C.NAT_FE_MAX, C.NAT_BE_MAX, C.SVC_IP_MAX, C.SRC_RANGES_MAX)


def no_room(used: Usage, need: Usage, capacity: Usage = MAP_CAPACITY) -> str | None:
    """Why `need` more entries do not fit beside `used`; None when they do. A service that does not fit
    is turned away whole: a full map fails the writer's batch, and with it every other change."""
    if all(have + more <= most for have, more, most in zip(used, need, capacity)):
        return None
    what, have, more, most = next(t for t in zip(Usage._fields, used, need, capacity) if t[1] + t[2] > t[3])
    return f"needs {more} {what} entries, the maps hold {most} and {have} are taken"


def usage(part, new_service_ips: int) -> Usage:
    """The entries `part` takes (a DesiredState: its frontends, backends and src_ranges; the tracker's
    Contribution has its own); how many of its service addresses are new is the caller's to say.
    IPv4 entries only: IPv6 ones are not programmed yet (sync/family.py), so they take no room."""
    v4_ids = [i for name, i in part.ids.items() if name.family == 4]
    return Usage(sum(1 for key in part.frontends if key.family == 4), sum(len(part.backends[i]) for i in v4_ids),
                 new_service_ips, sum(len(part.src_ranges[i]) for i in v4_ids if i in part.src_ranges))


def _plus(a: Usage, b: Usage) -> Usage:
    return Usage(a.frontends + b.frontends, a.backends + b.backends, a.service_ips + b.service_ips,
                 a.src_ranges + b.src_ranges)


class _Malformed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)   # slots: no __dict__ per object, tens of thousands of them
class _ServicePort:
    name: ServicePortName
    number: int
    proto: int
    node_port: int | None = None   # only for type NodePort and LoadBalancer

    def name_in(self, family: int) -> ServicePortName:
        """The name its id in `family` goes by (name itself for IPv4)."""
        return self.name if family == 4 else ServicePortName(*_port_name_fields(self.name), family)


_port_name_fields = operator.attrgetter("namespace", "name", "port", "protocol")


@dataclass(frozen=True, slots=True)
class _Service:
    namespace: str
    name: str
    cluster_ips: tuple[str, ...]  # both families, IPv4 ones first
    ports: tuple[_ServicePort, ...]
    internal_local: bool
    publish_not_ready: bool
    external_ips: tuple[str, ...] = ()        # both families
    lb_ips: tuple[str, ...] = ()              # status.loadBalancer.ingress[].ip, both families
    external_local: bool = False              # externalTrafficPolicy Local (NodePort/LoadBalancer only)
    src_ranges: frozenset[str] = frozenset()  # loadBalancerSourceRanges, both families, normalized
    health_check_port: int | None = None      # only with external_local
    affinity_timeout: int = 0                 # sessionAffinity ClientIP: its timeout (s); 0 = None


@dataclass(frozen=True, slots=True)
class _SlicePort:
    name: str
    protocol: str
    number: int


# An endpoint's conditions, as bits of one byte.
_READY, _SERVING, _TERMINATING = 1, 2, 4


@dataclass(frozen=True, slots=True)
class _Slice:
    namespace: str
    service: str
    name: str
    ports: tuple[_SlicePort, ...]
    # The endpoints column by column, the i-th of each being the i-th endpoint's: 100k endpoints at
    # scale, and an object per endpoint took three times the memory.
    addresses: tuple[str | None, ...]   # its first address, the only one used; None when it has none
    node_names: tuple[str | None, ...]
    conditions: bytes                   # _READY | _SERVING | _TERMINATING
    hints: tuple["Hints | None", ...] | None = None   # None: no endpoint of the slice has hints
    family: int = 4                     # addressType: IPv4 4, IPv6 6 (FQDN slices are not kept)


class Hints(NamedTuple):
    """An endpoint's topology hints: the zones and nodes it serves first."""
    zones: frozenset[str]
    nodes: frozenset[str]


class _NotProgrammed:
    def __repr__(self) -> str:
        return "NOT_PROGRAMMED"


# What parse_service/parse_slice give for an object that is fine but not ours to program (headless,
# ExternalName, another proxy's, no cluster IP; an FQDN slice).
NOT_PROGRAMMED = _NotProgrammed()
_PARSED = (_Service, _Slice, Rejected, _NotProgrammed)


class _Endpoint(NamedTuple):
    """One candidate backend of one service port, with what the proxy needs to choose it."""
    backend: Backend
    ready: bool
    serving: bool
    terminating: bool
    local: bool
    hints: Hints | None = None


def desired_state(services: Iterable, slices: Iterable, *, node_name: str,
                  known_ids: Mapping[ServicePortName, int], proxy_name: str | None = None,
                  reserved_ids: frozenset[int] = frozenset(), node_addresses: Sequence[str] = (),
                  nodeport_cidrs: Sequence[str] = (), capacity: Usage = MAP_CAPACITY,
                  node_zone: str = "") -> DesiredState:
    """`services` and `slices` are API objects, or what parse_service/parse_slice made of them (the
    tracker reads each object once, when it arrives). `reserved_ids` are held by services outside this call (the tracker computes one service
    at a time): new names never take them. NodePorts are served on `node_addresses` (with
    `nodeport_cidrs`, like kube-proxy's --nodeport-addresses, those inside one of them, per family).
    Services that do not fit in `capacity` are turned away whole; those with a known id go first, so
    a relist never swaps a programmed service for another. `node_zone`: this node's
    topology.kubernetes.io/zone label ("" when it has none), for the hints."""
    node_addrs = node_port_addresses(tuple(node_addresses), tuple(nodeport_cidrs)) if node_addresses else ()
    rejected: list[Rejected] = []
    parsed_services = _parse_each(services, lambda obj: parse_service(obj, proxy_name), rejected)
    slices_by_service = _group_slices(_parse_each(slices, parse_slice, rejected))
    ids = _assign_ids([port.name_in(family) for service in parsed_services for family in _families(service)
                       for port in service.ports], known_ids, reserved_ids)
    state = DesiredState(rejected=rejected)
    service_ips: set[str] = set()
    used = Usage()
    known_services = {(name.namespace, name.name) for name in known_ids}
    for service in sorted(parsed_services, key=lambda s: ((s.namespace, s.name) not in known_services,
                                                          s.namespace, s.name)):
        conflict = _conflict(service, state, ids, node_addrs)
        if conflict:
            rejected.append(Rejected("Service", service.namespace, service.name, *conflict))
            continue
        part = DesiredState()
        _program(service, slices_by_service.get((service.namespace, service.name), []), ids, node_name,
                 node_addrs, part, node_zone)
        need = usage(part, len({ip for ip in service.cluster_ips if family_of(ip) == 4} - service_ips))
        full = no_room(used, need, capacity)
        if full:
            rejected.append(Rejected("Service", service.namespace, service.name, "map_full", full))
            continue
        used = _plus(used, need)
        _merge(part, state)
        service_ips.update(service.cluster_ips)
        state.service_ips_by_service[(service.namespace, service.name)] = service.cluster_ips   # shared, not a copy
    state.service_ips = frozenset(service_ips)
    return state


# --- Map contents ---

def _families(service: _Service) -> tuple[int, ...]:
    """The families the service is served in: those of its cluster IPs, IPv4 first."""
    if all(":" not in ip for ip in service.cluster_ips):
        return (4,)
    return tuple(f for f in (4, 6) if any(family_of(ip) == f for ip in service.cluster_ips))


def _program(service: _Service, slices: list[_Slice], ids: Mapping[ServicePortName, int], node_name: str,
             node_addrs: tuple[str, ...], state: DesiredState, node_zone: str = "") -> None:
    # Each family on its own (IPv4 first: its entries come out as before families), its health
    # check count the larger one: a dual-stack pod has an address in each.
    local_ready = [_program_family(service, [s for s in slices if s.family == family], ids, node_name,
                                   node_addrs, state, node_zone, family)
                   for family in _families(service)]
    if service.health_check_port is not None:
        state.health_checks[service.health_check_port] = HealthCheck(service.namespace, service.name,
                                                                     max(map(len, local_ready)))


def _program_family(service: _Service, slices: list[_Slice], ids: Mapping[ServicePortName, int], node_name: str,
                    node_addrs: tuple[str, ...], state: DesiredState, node_zone: str, family: int) -> set[str]:
    """The service's entries in one family; returns its local ready endpoint addresses."""
    health_check = service.health_check_port is not None
    local_ready: set[str] = set()
    maybe_external = service.external_ips or service.lb_ips or node_addrs
    hinted = any(slice_.hints is not None for slice_ in slices)
    for port in service.ports:
        endpoints = _merged_endpoints(port, slices, node_name, service.publish_not_ready)
        external = _external_frontends(service, port, node_addrs, family) if maybe_external else _NO_EXTERNAL
        # internalTrafficPolicy Local without external frontends: the list is the local set itself
        # (local ready, else local serving+terminating). With external frontends the list must be the
        # cluster set (external Cluster-policy traffic needs it), local first, and ClusterIP traffic
        # takes its low `local` ordinals: the local serving+terminating fallback is then approximated
        # by the local members of the cluster set (they differ only when this node has serving
        # terminating endpoints but no ready one while another node has a ready one). The same
        # approximation holds for externalTrafficPolicy Local, whose set is ordinals < local too.
        local_only = service.internal_local and not external
        topology = _topology(endpoints, node_name, node_zone) if hinted and not local_only else None
        chosen = _serving_endpoints(endpoints, local_only=local_only, topology=topology)
        local = _by_address((e.backend for e in chosen if e.local), family)
        remote = _by_address((e.backend for e in chosen if not e.local), family)
        if topology is not None and external and (service.internal_local or service.external_local):
            # A local set (ordinals < local) beside a topology-narrowed cluster set: topology does not
            # narrow local sets, and one list holds both only when the cluster set takes every local
            # member. So the local part is the local members of the whole cluster set: cluster
            # traffic may then also reach a local endpoint hinted for another zone (only the
            # topology-mode Auto controller hints an endpoint away from its own zone).
            local = _by_address((e.backend for e in _serving_endpoints(endpoints, local_only=False) if e.local),
                                family)
        name = port.name_in(family)
        svc_id = ids[name]
        owner = owner_tag(name)
        state.ids[name] = svc_id
        state.backends[svc_id] = local + remote
        if service.affinity_timeout:
            state.affinity[svc_id] = service.affinity_timeout
        if service.internal_local:
            frontend = Frontend(svc_id, count=len(local), local=len(local), flags=C.NAT_FLG_INTERNAL_LOCAL, owner=owner)
        else:
            frontend = Frontend(svc_id, count=len(local) + len(remote), local=len(local), flags=0, owner=owner)
        for key in _frontend_keys(service, port, family):
            state.frontends[key] = frontend
        if external:
            by_flags: dict[int, Frontend] = {}
            for key, flags in external.items():
                if flags not in by_flags:
                    by_flags[flags] = Frontend(svc_id, count=len(local) + len(remote), local=len(local), flags=flags,
                                               owner=owner)
                state.frontends[key] = by_flags[flags]
            if any(flags & C.NAT_FLG_SRC_RANGES for flags in by_flags):
                state.src_ranges[svc_id] = _ranges_in(service.src_ranges, family)
        if health_check:
            local_ready.update(e.backend.addr for e in endpoints if e.local and e.ready)
    return local_ready


def _ranges_in(ranges: frozenset[str], family: int) -> frozenset[str]:
    """The source ranges of one family: each family's frontends are guarded by its own (kube-proxy)."""
    if family == 4 and all(":" not in r for r in ranges):
        return ranges   # the IPv4-only set itself, shared as before families
    return frozenset(r for r in ranges if family_of(r) == family)


def _merge(part: DesiredState, state: DesiredState) -> None:
    state.ids.update(part.ids)
    state.frontends.update(part.frontends)
    state.backends.update(part.backends)
    state.src_ranges.update(part.src_ranges)
    state.health_checks.update(part.health_checks)
    state.affinity.update(part.affinity)


def _frontend_keys(service: _Service, port: _ServicePort, family: int = 4) -> list[FrontendKey]:
    return [FrontendKey(ip, port.number, port.proto, family) for ip in service.cluster_ips if family_of(ip) == family]


def _external_frontends(service: _Service, port: _ServicePort, node_addrs: tuple[str, ...],
                        family: int = 4) -> dict[FrontendKey, int]:
    """The port's frontends in `family` for traffic from outside, with their flags; the first kind to
    name a key keeps it (NodePort, then externalIPs, then LoadBalancer ingress). Addresses of a family
    the service is not served in are not its (kube-proxy's proxier per family skips them)."""
    if not (service.external_ips or service.lb_ips or (port.node_port is not None and node_addrs)):
        return _NO_EXTERNAL
    flags = C.NAT_FLG_EXTERNAL | (C.NAT_FLG_EXTERNAL_LOCAL if service.external_local else 0)
    frontends: dict[FrontendKey, int] = {}
    if port.node_port is not None:
        for addr in node_addrs:
            if family_of(addr) == family:
                frontends.setdefault(FrontendKey(addr, port.node_port, port.proto, family), flags)
    for addr in service.external_ips:
        if family_of(addr) == family:
            frontends.setdefault(FrontendKey(addr, port.number, port.proto, family), flags)
    # loadBalancerSourceRanges guard the LoadBalancer IPs only: NodePorts bypass them (kube-proxy).
    lb_flags = flags | C.NAT_FLG_SRC_RANGES if _ranges_in(service.src_ranges, family) else flags
    for addr in service.lb_ips:
        if family_of(addr) == family:
            frontends.setdefault(FrontendKey(addr, port.number, port.proto, family), lb_flags)
    return frontends


def _conflict(service: _Service, state: DesiredState, ids: Mapping[ServicePortName, int],
              node_addrs: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """(reason, detail) when `service` cannot join what is programmed already (manifests can say anything)."""
    own: set[FrontendKey] = set()   # external keys of the ports before: one service may not name one twice
    maybe_external = bool(service.external_ips or service.lb_ips or node_addrs)
    for family, port in ((f, p) for f in _families(service) for p in service.ports):
        name = port.name_in(family)
        if name not in ids:
            return "no_free_id", f"no service id left for {name}"
        if name in state.ids:
            return "duplicate_service", f"{name} is defined twice"
        cluster_keys = _frontend_keys(service, port, family)
        for key in cluster_keys:
            if key in state.frontends:
                return "duplicate_frontend", f"{key.addr}:{key.port}/{port.name.protocol} belongs to another service"
        for key in _external_frontends(service, port, node_addrs, family) if maybe_external else ():
            if key in state.frontends:
                return "duplicate_frontend", f"{key.addr}:{key.port}/{port.name.protocol} belongs to another service"
            if key in own or key in cluster_keys:
                return "duplicate_frontend", f"{key.addr}:{key.port}/{port.name.protocol} is named twice"
            own.add(key)
    if service.health_check_port is not None and service.health_check_port in state.health_checks:
        return ("duplicate_health_check_port",
                f"healthCheckNodePort {service.health_check_port} belongs to another service")
    return None


@functools.lru_cache(maxsize=16)
def node_port_addresses(node_addresses: tuple[str, ...], nodeport_cidrs: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The node addresses NodePorts are served on, IPv4 ones first: of each family those inside one of
    `nodeport_cidrs` of that family, all of them when it has none of that family (kube-proxy's
    --nodeport-addresses, per family). Raises ValueError for what is not an address or a CIDR."""
    networks = [ipaddress.ip_network(c.strip(), strict=False) for c in nodeport_cidrs]
    chosen = []
    for version in (4, 6):
        family_networks = [n for n in networks if n.version == version]
        for text in node_addresses:
            address = ipaddress.ip_address(text.strip())
            if address.version == version and (not family_networks or any(address in n for n in family_networks)):
                chosen.append(str(address))
    return tuple(dict.fromkeys(chosen))


def _assign_ids(names: Iterable[ServicePortName], known_ids: Mapping[ServicePortName, int],
                reserved: frozenset[int]) -> dict[ServicePortName, int]:
    """Known names keep their id (the maps and counters stay put); new names take the smallest free one."""
    names = sorted(set(names), key=_name_order)   # IPv4 names first: they take the ids they took before families
    ids: dict[ServicePortName, int] = {}
    taken: set[int] = set(reserved)
    for name in names:
        known = known_ids.get(name)
        if type(known) is int and 1 <= known < C.SVC_COUNTERS_MAX and known not in taken:
            ids[name] = known
            taken.add(known)
    free = (i for i in range(1, C.SVC_COUNTERS_MAX) if i not in taken)
    for name in names:
        if name not in ids and (new_id := next(free, None)) is not None:
            ids[name] = new_id
    return ids


# ServicePortName's own order (its fields in turn), as a key: sorting 10k names by their dataclass
# __lt__ took 120k Python-level calls.
_name_order = operator.attrgetter("family", "namespace", "name", "port", "protocol")


# --- Choosing backends ---

def _merged_endpoints(port: _ServicePort, slices: list[_Slice], node_name: str,
                      publish_not_ready: bool) -> list[_Endpoint]:
    """The port's endpoints over all the service's slices, each (address, port) once."""
    if len(slices) == 1:
        endpoints = _only_slice_endpoints(slices[0], port, node_name, publish_not_ready)
        if endpoints is not None:
            return endpoints
    merged: dict[Backend, _Endpoint] = {}
    for slice_ in slices:
        for candidate in _slice_endpoints(slice_, port, node_name, publish_not_ready):
            current = merged.get(candidate.backend)
            # An endpoint listed twice (moving between slices) counts with its most usable state.
            if current is None or _usability(candidate) > _usability(current):
                merged[candidate.backend] = candidate
    return list(merged.values())


def _only_slice_endpoints(slice_: _Slice, port: _ServicePort, node_name: str,
                          publish_not_ready: bool) -> list[_Endpoint] | None:
    """The common case, without the merge: the service's one slice matches the port once and lists
    each address once, so no endpoint meets another; the same list as the merge's. None otherwise."""
    numbers = _port_numbers(slice_, port)
    addresses = slice_.addresses
    if len(numbers) != 1 or len(set(addresses)) != len(addresses):
        return None
    # tuple.__new__, not the NamedTuples' own (keyword-taking) __new__: half the time at 100k endpoints.
    new, number, states = tuple.__new__, numbers[0], _ENDPOINT_STATES[publish_not_ready]
    return [new(_Endpoint, (new(Backend, (address, number)), *states[conditions], node == node_name, hints))
            for address, node, conditions, hints in zip(addresses, slice_.node_names, slice_.conditions,
                                                        _hints_column(slice_))
            if address is not None]


def _slice_endpoints(slice_: _Slice, port: _ServicePort, node_name: str,
                     publish_not_ready: bool) -> Iterable[_Endpoint]:
    states = _ENDPOINT_STATES[publish_not_ready]
    for number in _port_numbers(slice_, port):
        for address, node, conditions, hints in zip(slice_.addresses, slice_.node_names, slice_.conditions,
                                                    _hints_column(slice_)):
            if address is not None:
                yield _Endpoint(Backend(address, number), *states[conditions], node == node_name, hints)


def _hints_column(slice_: _Slice):
    return slice_.hints if slice_.hints is not None else itertools.repeat(None)


def _port_numbers(slice_: _Slice, port: _ServicePort) -> list[int]:
    # Matching by port name is how kube-proxy resolves targetPort, numeric or named, per endpoint.
    return [p.number for p in slice_.ports if p.name == port.name.port and p.protocol == port.name.protocol]


# (ready, serving, terminating) of an endpoint by its condition bits, without and with
# publishNotReadyAddresses (every endpoint ready).
_ENDPOINT_STATES = {publish_not_ready: {bits: (bool(bits & _READY) or publish_not_ready, bool(bits & _SERVING),
                                               bool(bits & _TERMINATING))
                                        for bits in range((_READY | _SERVING | _TERMINATING) + 1)}
                    for publish_not_ready in (False, True)}


def _usability(endpoint: _Endpoint) -> int:
    return 2 if endpoint.ready else 1 if endpoint.serving and endpoint.terminating else 0


def _serving_endpoints(endpoints: list[_Endpoint], *, local_only: bool,
                       topology: Callable[[_Endpoint], bool] | None = None) -> list[_Endpoint]:
    """KEP-1669: the ready ones (of those `topology` keeps); if none, the serving terminating ones
    (topology aside, as kube-proxy: a last resort before dropping connections); never a non-serving one."""
    if local_only:
        endpoints = [e for e in endpoints if e.local]
    return [e for e in endpoints if e.ready and (topology is None or topology(e))] or \
        [e for e in endpoints if e.serving and e.terminating]


def _topology(endpoints: list[_Endpoint], node_name: str, zone: str) -> Callable[[_Endpoint], bool] | None:
    """Which endpoints the hints keep for this node, None when they keep all (kube-proxy's
    topologyModeFromHints): node hints when every ready endpoint has some and one names this node
    (PreferSameNode); else zone hints when every ready endpoint has some and one names this node's
    zone; else none. Endpoints that are not ready take no part in the decision."""
    ready = [e for e in endpoints if e.ready]
    if not ready or any(e.hints is None for e in ready):
        return None
    if all(e.hints.nodes for e in ready) and any(node_name in e.hints.nodes for e in ready):
        return lambda e: e.hints is not None and node_name in e.hints.nodes
    if zone and all(e.hints.zones for e in ready) and any(zone in e.hints.zones for e in ready):
        return lambda e: e.hints is not None and zone in e.hints.zones
    return None


def _by_address(backends: Iterable[Backend], family: int = 4) -> tuple[Backend, ...]:
    if family == 4:
        return tuple(sorted(backends, key=lambda b: (socket.inet_aton(b.addr), b.port)))
    return tuple(sorted(backends, key=lambda b: (socket.inet_pton(socket.AF_INET6, b.addr), b.port)))


def _group_slices(slices: list[_Slice]) -> dict[tuple[str, str], list[_Slice]]:
    grouped: dict[tuple[str, str], list[_Slice]] = {}
    for slice_ in sorted(slices, key=lambda s: s.name):  # by name, so duplicates resolve the same way each time
        grouped.setdefault((slice_.namespace, slice_.service), []).append(slice_)
    return grouped


# --- Reading Kubernetes objects ---

def parse_service(obj, proxy_name: str | None = None):
    """What the maps need of one Service: a compact form, NOT_PROGRAMMED, or why it is Rejected."""
    try:
        return _parse_service(obj, proxy_name) or NOT_PROGRAMMED
    except _Malformed as problem:
        return Rejected("Service", *_identity(obj), problem.reason, problem.detail)


def parse_slice(obj):
    """What the maps need of one EndpointSlice: a compact form, NOT_PROGRAMMED, or why it is Rejected."""
    try:
        return _parse_slice(obj) or NOT_PROGRAMMED
    except _Malformed as problem:
        return Rejected("EndpointSlice", *_identity(obj), problem.reason, problem.detail)


def _parse_each(objects: Iterable, parse: Callable, rejected: list[Rejected]) -> list:
    parsed = []
    for obj in objects:
        result = obj if isinstance(obj, _PARSED) else parse(obj)
        if type(result) is Rejected:
            rejected.append(result)
        elif result is not NOT_PROGRAMMED:
            parsed.append(result)
    return parsed


def _identity(obj) -> tuple[str, str]:
    """(namespace, name) as far as the object has them, for naming it in the log."""
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(metadata, dict):
        return "", ""
    namespace, name = metadata.get("namespace"), metadata.get("name")
    return (namespace if isinstance(namespace, str) else "", name if isinstance(name, str) else "")


def _parse_service(obj, proxy_name: str | None) -> _Service | None:
    """The service to program, None when it is not ours to program."""
    obj = _expect(obj, dict, "the Service")
    metadata = _required(obj, "metadata", dict)
    namespace = _intern(_required(metadata, "namespace", str))
    name = _required(metadata, "name", str)
    spec = _required(obj, "spec", dict)
    labels = _optional(metadata, "labels", dict, {})
    # Checked before the rest of the spec: what we never program cannot break anything.
    if not _is_ours(spec, labels, proxy_name):
        return None
    cluster_ips = _cluster_ips(spec)
    if not cluster_ips:
        return None
    # A value the API would refuse ("local", "Nodeport") is rejected, not read as the default: the
    # object asks for something we cannot tell.
    node_ports = _enum(spec, "type", SERVICE_TYPES) in NODE_PORT_TYPES
    external_local = _enum(spec, "externalTrafficPolicy", TRAFFIC_POLICIES) == "Local" and node_ports
    internal_local = _enum(spec, "internalTrafficPolicy", TRAFFIC_POLICIES) == "Local"
    health_check_port = spec.get("healthCheckNodePort")
    if health_check_port is not None:
        _port_number(health_check_port, "healthCheckNodePort")
    external_ips = spec.get("externalIPs")
    affinity_timeout = _affinity_timeout(spec) if _enum(spec, "sessionAffinity", AFFINITY_TYPES) == "ClientIP" else 0
    return _Service(namespace, name, cluster_ips, _service_ports(spec, namespace, name, node_ports),
                    internal_local=internal_local,
                    publish_not_ready=_optional(spec, "publishNotReadyAddresses", bool, False),
                    external_ips=_addresses(_expect(external_ips, list, "externalIPs"), "externalIP")
                    if external_ips is not None else (),
                    lb_ips=_ingress_ips(obj["status"]) if obj.get("status") is not None else (),
                    external_local=external_local,
                    src_ranges=_source_ranges(spec) if spec.get("loadBalancerSourceRanges") is not None else _NO_RANGES,
                    health_check_port=health_check_port if external_local else None,
                    affinity_timeout=affinity_timeout)


def _affinity_timeout(spec: dict) -> int:
    """sessionAffinityConfig.clientIP.timeoutSeconds: 1..86400, 10800 when absent (the API's default)."""
    config = _optional(_optional(spec, "sessionAffinityConfig", dict, {}), "clientIP", dict, {})
    timeout = config.get("timeoutSeconds")
    if timeout is None:
        return AFFINITY_DEFAULT_TIMEOUT_S
    if type(timeout) is not int or not 1 <= timeout <= AFFINITY_MAX_TIMEOUT_S:
        raise _Malformed("bad_value", f"sessionAffinityConfig.clientIP.timeoutSeconds {timeout!r} is not "
                                      f"in 1..{AFFINITY_MAX_TIMEOUT_S}")
    return timeout


def _addresses(addresses: list, what: str) -> tuple[str, ...]:
    """Each once, IPv4 ones first (their order as before families), IPv6 ones in canonical text (one
    address, one key); what is no address is malformed."""
    versions = [(_ip_version(a, what), a) for a in addresses]
    return tuple(dict.fromkeys([*(a for v, a in versions if v == 4), *(_canonical6(a) for v, a in versions if v == 6)]))


def _canonical6(address: str) -> str:
    """RFC 5952 text: "fd00:0::10" and "FD00::10" are the address "fd00::10" is."""
    return str(ipaddress.IPv6Address(address))


def _ingress_ips(status) -> tuple[str, ...]:
    ingress = _optional(_optional(_expect(status, dict, "status"), "loadBalancer", dict, {}), "ingress", list, [])
    if not ingress:
        return ()
    addresses = []
    for entry in ingress:
        entry = _expect(entry, dict, "a loadBalancer ingress")
        address = _optional(entry, "ip", str, "")
        # Hostname-only ingress has no IP; ipMode Proxy (KEP-1860): the load balancer sends to the
        # node's NodePort itself, so kube-proxy does not program the IP (VIP is the default).
        if address and _optional(entry, "ipMode", str, "VIP") != "Proxy":
            addresses.append(address)
    return _addresses(addresses, "loadBalancer ingress ip")


def _source_ranges(spec: dict) -> frozenset[str]:
    ranges = set()
    for entry in _expect(spec["loadBalancerSourceRanges"], list, "loadBalancerSourceRanges"):
        try:
            if not isinstance(entry, str) or "/" not in entry:
                raise ValueError(entry)
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise _Malformed("bad_cidr", f"loadBalancerSourceRanges entry {entry!r} is not a CIDR") from None
        ranges.add(str(network))
    return frozenset(ranges)


def _is_ours(spec: dict, labels: dict, proxy_name: str | None) -> bool:
    if spec.get("type") == "ExternalName" or HEADLESS_LABEL in labels:
        return False
    return PROXY_NAME_LABEL not in labels or (proxy_name is not None and labels[PROXY_NAME_LABEL] == proxy_name)


def _cluster_ips(spec: dict) -> tuple[str, ...]:
    """The cluster IPs, IPv4 ones first; () when there is none to program (headless, not allocated).
    The API server fills clusterIPs by ipFamilyPolicy and ipFamilies, and the core trusts them, but an
    address of a family ipFamilies does not list makes the Service malformed: which family's
    endpoints would it get?"""
    addresses = _optional(spec, "clusterIPs", list, []) or [spec.get("clusterIP")]
    if addresses[0] in (None, "", "None"):
        return ()
    _enum(spec, "ipFamilyPolicy", IP_FAMILY_POLICIES)
    families = set()
    for family in _optional(spec, "ipFamilies", list, []):
        if not isinstance(family, str) or family not in IP_FAMILIES:
            raise _Malformed("bad_value", f"ipFamilies entry {family!r} is not IPv4 or IPv6")
        families.add(IP_FAMILIES[family])
    versions = [(_ip_version(address, "clusterIP"), address) for address in addresses]
    for version, address in versions:
        if families and version not in families:
            raise _Malformed("bad_ip", f"clusterIP {address} is IPv{version}, which ipFamilies does not list")
    return tuple(dict.fromkeys([*(a for v, a in versions if v == 4), *(_canonical6(a) for v, a in versions if v == 6)]))


def _service_ports(spec: dict, namespace: str, name: str, node_ports: bool = False) -> tuple[_ServicePort, ...]:
    ports: list[_ServicePort] = []
    numbers: set[tuple[int, int]] = set()   # sets, not a scan of the ports so far: a list can be huge
    names: set[ServicePortName] = set()
    for entry in _optional(spec, "ports", list, []):
        port = _service_port(entry, namespace, name, node_ports)
        protocol = port.name.protocol
        if (port.number, port.proto) in numbers:
            raise _Malformed("duplicate_port", f"port {port.number}/{protocol} is listed twice")
        if port.name in names:
            raise _Malformed("duplicate_port", f"port name {port.name.port!r}/{protocol} is used twice")
        numbers.add((port.number, port.proto))
        names.add(port.name)
        ports.append(port)
    return tuple(ports)


def _service_port(entry, namespace: str, service: str, node_ports: bool = False) -> _ServicePort:
    entry = _expect(entry, dict, "a Service port")
    port_name = _intern(_optional(entry, "name", str, ""))
    protocol = _protocol(entry)
    number = _port_number(entry.get("port"), "port")
    node_port = entry.get("nodePort")
    if node_port is not None:
        _port_number(node_port, "nodePort")
    target = entry.get("targetPort")
    if target is not None and not (_is_port(target) or (isinstance(target, str) and target)):
        raise _Malformed("bad_port", f"targetPort {target!r} is neither a port in 1..65535 nor a port name")
    return _ServicePort(ServicePortName(namespace, service, port_name, protocol), number, PROTOCOL_NUMBERS[protocol],
                        node_port if node_ports else None)


def _parse_slice(obj) -> _Slice | None:
    """The slice's endpoints, of its addressType; None for FQDN."""
    obj = _expect(obj, dict, "the EndpointSlice")
    metadata = _required(obj, "metadata", dict)
    namespace = _intern(_required(metadata, "namespace", str))
    name = _required(metadata, "name", str)
    service = _required(_optional(metadata, "labels", dict, {}), SERVICE_NAME_LABEL, str)
    address_type = _enum(obj, "addressType", ADDRESS_TYPES)
    if address_type is None:
        raise _Malformed("missing_field", "addressType is missing")
    family = IP_FAMILIES.get(address_type)
    if family is None:
        return None
    ports = (_slice_port(entry) for entry in _optional(obj, "ports", list, []))
    ports = tuple(p for p in ports if p)   # checked before the endpoints: the first fault is the one named
    check = _endpoint_address if family == 4 else _endpoint_address_v6
    endpoints = [_slice_endpoint(entry, check) for entry in _optional(obj, "endpoints", list, [])]
    addresses, node_names, conditions, hints = zip(*endpoints) if endpoints else ((), (), (), ())   # rows to columns
    return _Slice(namespace, service, name, ports, addresses, node_names, bytes(conditions),
                  hints if any(h is not None for h in hints) else None, family)


def _slice_port(entry) -> _SlicePort | None:
    """None for a port without a number: kube-proxy has nothing to forward to."""
    entry = _expect(entry, dict, "an EndpointSlice port")
    if entry.get("port") is None:
        return None
    return _SlicePort(_intern(_optional(entry, "name", str, "")), _protocol(entry), _port_number(entry["port"], "port"))


def _slice_endpoint(entry, check: Callable = None) -> tuple[str | None, str | None, int, Hints | None]:
    """(first address, node name, condition bits, topology hints); `check` validates each address
    (the slice's addressType)."""
    check = check or _endpoint_address
    entry = _expect(entry, dict, "an endpoint")
    # Every address is checked; the API calls them fungible and kube-proxy uses the first only.
    addresses = _optional(entry, "addresses", list, _NO_ADDRESSES)
    for address in addresses:   # a loop, not a list of them: 100k endpoints at scale
        check(address)
    conditions = _optional(entry, "conditions", dict, {})
    ready = _optional(conditions, "ready", bool, True)
    bits = (_READY if ready else 0) | (_SERVING if _optional(conditions, "serving", bool, ready) else 0) | \
        (_TERMINATING if _optional(conditions, "terminating", bool, False) else 0)
    node_name = _optional(entry, "nodeName", str, None)
    hints = _hints(entry["hints"]) if entry.get("hints") is not None else None
    first = addresses[0] if addresses else None
    if first is not None and check is _endpoint_address_v6:
        first = _canonical6(first)   # one address, one backend, whatever text names it
    return first, _intern(node_name) if node_name is not None else None, bits, hints


def _hints(value) -> Hints | None:
    """An endpoint's hints: forZones and forNodes, lists of {name}; None when both are empty."""
    hints = _expect(value, dict, "hints")
    zones, nodes = (frozenset(_intern(_required(_expect(item, dict, f"a {field} entry"), "name", str))
                              for item in _optional(hints, field, list, ()))
                    for field in ("forZones", "forNodes"))
    return Hints(zones, nodes) if zones or nodes else None


_NO_ADDRESSES: list = []   # shared, never written


# --- Field checks: each raises _Malformed with the reason the metric counts ---

def _expect(value, kind: type, what: str):
    if not isinstance(value, kind):
        raise _Malformed("bad_type", f"{what} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _required(obj: dict, key: str, kind: type):
    if obj.get(key) in (None, ""):
        raise _Malformed("missing_field", f"{key} is missing")
    return _expect(obj[key], kind, key)


def _optional(obj: dict, key: str, kind: type, default):
    """The field, or `default` when absent or null (JSON null is how the API says absent)."""
    value = obj.get(key)
    if value is None:
        return default
    return value if isinstance(value, kind) else _expect(value, kind, key)   # no call when fine: 700k at 10k slices


def _enum(obj: dict, key: str, allowed: tuple[str, ...]) -> str | None:
    """One of `allowed`, or None when absent, null or "" (what the API's defaulting fills in)."""
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in allowed:
        raise _Malformed("bad_value", f"{key} {value!r} is not one of {', '.join(allowed)}")
    return value


def _protocol(entry: dict) -> str:
    protocol = entry.get("protocol")
    if protocol is None:
        return "TCP"
    if not isinstance(protocol, str) or protocol not in PROTOCOL_NUMBERS:
        raise _Malformed("bad_protocol", f"protocol {protocol!r} is not TCP, UDP or SCTP")
    return _PROTOCOL_NAMES[protocol]   # the one "TCP", not a copy per object


_PROTOCOL_NAMES = {name: name for name in PROTOCOL_NUMBERS}


def _intern(text: str) -> str:
    """One copy of text that repeats across objects (namespaces, port and node names): the compact
    forms are kept for as long as the objects exist. Only str itself: a subclass stays as it is."""
    return sys.intern(text) if type(text) is str else text


def _is_port(value) -> bool:
    return type(value) is int and 1 <= value <= 65535  # type(), not isinstance: True is not a port


def _port_number(value, what: str) -> int:
    if not _is_port(value):
        raise _Malformed("bad_port", f"{what} {value!r} is not in 1..65535")
    return value


def _ip_version(value, what: str) -> int:
    """4 or 6 for an address in canonical text form. inet_pton is strict (no leading zeros, no
    short forms) and twenty times quicker than the ipaddress module, which matters at 100k endpoints."""
    if isinstance(value, str):
        for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            try:
                socket.inet_pton(family, value)
                return version
            except (OSError, ValueError):   # ValueError: an embedded NUL
                pass
    raise _Malformed("bad_ip", f"{what} {value!r} is not an IP address")


def _ipv4(value) -> str:
    if _ip_version(value, "address") != 4:
        raise _Malformed("bad_ip", f"address {value!r} is not IPv4")
    return value


_NO_POD_PREFIXES = ("127.", "169.254.", "224.0.0.")   # loopback, link-local, link-local multicast


def _endpoint_address(value) -> str:
    """An IPv4 address a pod can have: the API refuses the unspecified, loopback, link-local and
    link-local multicast ones for an endpoint; a backend there would take its share of the
    connections and answer none (169.254.42.1 is also the hairpin source)."""
    try:
        socket.inet_pton(socket.AF_INET, value)   # the usual case in one call, 100k times at scale
        address = value
    except (OSError, TypeError, ValueError):
        address = _ipv4(value)   # raises, naming what is wrong
    # Prefixes of text are exact here: inet_pton took only canonical dotted quads.
    if address.startswith(_NO_POD_PREFIXES) or address == "0.0.0.0":
        raise _Malformed("bad_ip", f"endpoint address {address} is unspecified, loopback or link-local")
    return address


def _endpoint_address_v6(value) -> str:
    """An IPv6 address a pod can have: not the unspecified, loopback, link-local or link-local
    multicast ones (what the API refuses, as for IPv4)."""
    if _ip_version(value, "address") != 6:
        raise _Malformed("bad_ip", f"address {value!r} is not IPv6")
    address = ipaddress.IPv6Address(value)
    if address.is_unspecified or address.is_loopback or address.is_link_local or \
            address in _LINK_LOCAL_MULTICAST_V6:
        raise _Malformed("bad_ip", f"endpoint address {value} is unspecified, loopback or link-local")
    return value


_LINK_LOCAL_MULTICAST_V6 = ipaddress.ip_network("ff02::/16")
