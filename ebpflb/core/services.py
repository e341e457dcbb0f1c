"""Services and EndpointSlices, as the Kubernetes API gives them, in; the desired map contents out.

Pure: nothing is read, logged or kept between calls. A malformed object is skipped whole and
reported in `DesiredState.rejected`; no input shape makes this module raise.
"""
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ebpflb.structs import C

from .model import Backend, DesiredState, Frontend, FrontendKey, Rejected, ServicePortName

PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"
PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"


class _Malformed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _ServicePort:
    name: ServicePortName
    number: int
    proto: int


@dataclass(frozen=True)
class _Service:
    namespace: str
    name: str
    cluster_ips: tuple[str, ...]  # IPv4 only
    ports: tuple[_ServicePort, ...]
    internal_local: bool
    publish_not_ready: bool


@dataclass(frozen=True)
class _SlicePort:
    name: str
    protocol: str
    number: int


class _SliceEndpoint(NamedTuple):   # NamedTuple, not a frozen dataclass: 100k of them at scale
    addresses: tuple[str, ...]
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None


@dataclass(frozen=True)
class _Slice:
    namespace: str
    service: str
    name: str
    ports: tuple[_SlicePort, ...]
    endpoints: tuple[_SliceEndpoint, ...]


class _Endpoint(NamedTuple):
    """One candidate backend of one service port, with what the proxy needs to choose it."""
    backend: Backend
    ready: bool
    serving: bool
    terminating: bool
    local: bool


def desired_state(services: Iterable, slices: Iterable, *, node_name: str,
                  known_ids: Mapping[ServicePortName, int], proxy_name: str | None = None,
                  reserved_ids: frozenset[int] = frozenset()) -> DesiredState:
    """`reserved_ids` are held by services outside this call (the tracker computes one service
    at a time): new names never take them."""
    rejected: list[Rejected] = []
    parsed_services = _parse_each(services, "Service", lambda obj: _parse_service(obj, proxy_name), rejected)
    slices_by_service = _group_slices(_parse_each(slices, "EndpointSlice", _parse_slice, rejected))
    ids = _assign_ids([port.name for service in parsed_services for port in service.ports], known_ids,
                      reserved_ids)
    state = DesiredState(rejected=rejected)
    service_ips: set[str] = set()
    for service in sorted(parsed_services, key=lambda s: (s.namespace, s.name)):
        conflict = _conflict(service, state, ids)
        if conflict:
            rejected.append(Rejected("Service", service.namespace, service.name, *conflict))
            continue
        _program(service, slices_by_service.get((service.namespace, service.name), []), ids, node_name, state)
        service_ips.update(service.cluster_ips)
    state.service_ips = frozenset(service_ips)
    return state


# --- Map contents ---

def _program(service: _Service, slices: list[_Slice], ids: Mapping[ServicePortName, int], node_name: str,
             state: DesiredState) -> None:
    for port in service.ports:
        endpoints = _merged_endpoints(port, slices, node_name, service.publish_not_ready)
        chosen = _serving_endpoints(endpoints, local_only=service.internal_local)
        local = _by_address(e.backend for e in chosen if e.local)
        remote = _by_address(e.backend for e in chosen if not e.local)
        svc_id = ids[port.name]
        state.ids[port.name] = svc_id
        state.backends[svc_id] = local + remote
        flags = C.NAT_FLG_INTERNAL_LOCAL if service.internal_local else 0
        frontend = Frontend(svc_id, count=len(local) + len(remote), local=len(local), flags=flags)
        for key in _frontend_keys(service, port):
            state.frontends[key] = frontend


def _frontend_keys(service: _Service, port: _ServicePort) -> list[FrontendKey]:
    return [FrontendKey(ip, port.number, port.proto) for ip in service.cluster_ips]


def _conflict(service: _Service, state: DesiredState,
              ids: Mapping[ServicePortName, int]) -> tuple[str, str] | None:
    """(reason, detail) when `service` cannot join what is programmed already (manifests can say anything)."""
    for port in service.ports:
        if port.name not in ids:
            return "no_free_id", f"no service id left for {port.name}"
        if port.name in state.ids:
            return "duplicate_service", f"{port.name} is defined twice"
        for key in _frontend_keys(service, port):
            if key in state.frontends:
                return "duplicate_frontend", f"{key.addr}:{key.port}/{port.name.protocol} belongs to another service"
    return None


def _assign_ids(names: Iterable[ServicePortName], known_ids: Mapping[ServicePortName, int],
                reserved: frozenset[int]) -> dict[ServicePortName, int]:
    """Known names keep their id (the maps and counters stay put); new names take the smallest free one."""
    names = sorted(set(names))
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


# --- Choosing backends ---

def _merged_endpoints(port: _ServicePort, slices: list[_Slice], node_name: str,
                      publish_not_ready: bool) -> list[_Endpoint]:
    """The port's endpoints over all the service's slices, each (address, port) once."""
    merged: dict[Backend, _Endpoint] = {}
    for slice_ in slices:
        for candidate in _slice_endpoints(slice_, port, node_name, publish_not_ready):
            current = merged.get(candidate.backend)
            # An endpoint listed twice (moving between slices) counts with its most usable state.
            if current is None or _usability(candidate) > _usability(current):
                merged[candidate.backend] = candidate
    return list(merged.values())


def _slice_endpoints(slice_: _Slice, port: _ServicePort, node_name: str,
                     publish_not_ready: bool) -> Iterable[_Endpoint]:
    # Matching by port name is how kube-proxy resolves targetPort, numeric or named, per endpoint.
    numbers = [p.number for p in slice_.ports if p.name == port.name.port and p.protocol == port.name.protocol]
    for number in numbers:
        for endpoint in slice_.endpoints:
            # The API calls an endpoint's addresses fungible; kube-proxy uses the first only.
            for address in endpoint.addresses[:1]:
                yield _Endpoint(Backend(address, number), ready=endpoint.ready or publish_not_ready,
                                serving=endpoint.serving, terminating=endpoint.terminating,
                                local=endpoint.node_name == node_name)


def _usability(endpoint: _Endpoint) -> int:
    return 2 if endpoint.ready else 1 if endpoint.serving and endpoint.terminating else 0


def _serving_endpoints(endpoints: list[_Endpoint], *, local_only: bool) -> list[_Endpoint]:
    """KEP-1669: the ready ones; if none, the serving terminating ones; never a non-serving one."""
    if local_only:
        endpoints = [e for e in endpoints if e.local]
    return [e for e in endpoints if e.ready] or [e for e in endpoints if e.serving and e.terminating]


def _by_address(backends: Iterable[Backend]) -> tuple[Backend, ...]:
    return tuple(sorted(backends, key=lambda b: (socket.inet_aton(b.addr), b.port)))


def _group_slices(slices: list[_Slice]) -> dict[tuple[str, str], list[_Slice]]:
    grouped: dict[tuple[str, str], list[_Slice]] = {}
    for slice_ in sorted(slices, key=lambda s: s.name):  # by name, so duplicates resolve the same way each time
        grouped.setdefault((slice_.namespace, slice_.service), []).append(slice_)
    return grouped


# --- Reading Kubernetes objects ---

def _parse_each(objects: Iterable, kind: str, parse: Callable, rejected: list[Rejected]) -> list:
    parsed = []
    for obj in objects:
        try:
            result = parse(obj)
        except _Malformed as problem:
            rejected.append(Rejected(kind, *_identity(obj), problem.reason, problem.detail))
        else:
            if result is not None:
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
    namespace = _required(metadata, "namespace", str)
    name = _required(metadata, "name", str)
    spec = _required(obj, "spec", dict)
    labels = _optional(metadata, "labels", dict, {})
    # Checked before the rest of the spec: what we never program cannot break anything.
    if not _is_ours(spec, labels, proxy_name):
        return None
    cluster_ips = _cluster_ips(spec)
    if not cluster_ips:
        return None
    return _Service(namespace, name, cluster_ips, _service_ports(spec, namespace, name),
                    internal_local=spec.get("internalTrafficPolicy") == "Local",
                    publish_not_ready=spec.get("publishNotReadyAddresses") is True)


def _is_ours(spec: dict, labels: dict, proxy_name: str | None) -> bool:
    if spec.get("type") == "ExternalName" or HEADLESS_LABEL in labels:
        return False
    return PROXY_NAME_LABEL not in labels or (proxy_name is not None and labels[PROXY_NAME_LABEL] == proxy_name)


def _cluster_ips(spec: dict) -> tuple[str, ...]:
    """The IPv4 cluster IPs; () when there is none to program (headless, not allocated, IPv6 only)."""
    addresses = _optional(spec, "clusterIPs", list, []) or [spec.get("clusterIP")]
    if addresses[0] in (None, "", "None"):
        return ()
    versions = [(_ip_version(address, "clusterIP"), address) for address in addresses]
    return tuple(dict.fromkeys(address for version, address in versions if version == 4))


def _service_ports(spec: dict, namespace: str, name: str) -> tuple[_ServicePort, ...]:
    ports: list[_ServicePort] = []
    for entry in _optional(spec, "ports", list, []):
        port = _service_port(entry, namespace, name)
        protocol = port.name.protocol
        if any((p.number, p.proto) == (port.number, port.proto) for p in ports):
            raise _Malformed("duplicate_port", f"port {port.number}/{protocol} is listed twice")
        if any(p.name == port.name for p in ports):
            raise _Malformed("duplicate_port", f"port name {port.name.port!r}/{protocol} is used twice")
        ports.append(port)
    return tuple(ports)


def _service_port(entry, namespace: str, service: str) -> _ServicePort:
    entry = _expect(entry, dict, "a Service port")
    port_name = _optional(entry, "name", str, "")
    protocol = _protocol(entry)
    number = _port_number(entry.get("port"), "port")
    if entry.get("nodePort") is not None:
        _port_number(entry["nodePort"], "nodePort")
    target = entry.get("targetPort")
    if target is not None and not (_is_port(target) or (isinstance(target, str) and target)):
        raise _Malformed("bad_port", f"targetPort {target!r} is neither a port in 1..65535 nor a port name")
    return _ServicePort(ServicePortName(namespace, service, port_name, protocol), number, PROTOCOL_NUMBERS[protocol])


def _parse_slice(obj) -> _Slice | None:
    """The slice's IPv4 endpoints; None for another address type."""
    obj = _expect(obj, dict, "the EndpointSlice")
    metadata = _required(obj, "metadata", dict)
    namespace = _required(metadata, "namespace", str)
    name = _required(metadata, "name", str)
    service = _required(_optional(metadata, "labels", dict, {}), SERVICE_NAME_LABEL, str)
    if obj.get("addressType") != "IPv4":
        return None
    ports = (_slice_port(entry) for entry in _optional(obj, "ports", list, []))
    endpoints = (_slice_endpoint(entry) for entry in _optional(obj, "endpoints", list, []))
    return _Slice(namespace, service, name, tuple(p for p in ports if p), tuple(endpoints))


def _slice_port(entry) -> _SlicePort | None:
    """None for a port without a number: kube-proxy has nothing to forward to."""
    entry = _expect(entry, dict, "an EndpointSlice port")
    if entry.get("port") is None:
        return None
    return _SlicePort(_optional(entry, "name", str, ""), _protocol(entry), _port_number(entry["port"], "port"))


def _slice_endpoint(entry) -> _SliceEndpoint:
    entry = _expect(entry, dict, "an endpoint")
    addresses = tuple(_ipv4(a) for a in _optional(entry, "addresses", list, []))
    conditions = _optional(entry, "conditions", dict, {})
    ready = _optional(conditions, "ready", bool, True)
    return _SliceEndpoint(addresses, ready=ready,
                          serving=_optional(conditions, "serving", bool, ready),
                          terminating=_optional(conditions, "terminating", bool, False),
                          node_name=_optional(entry, "nodeName", str, None))


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
    return default if value is None else _expect(value, kind, key)


def _protocol(entry: dict) -> str:
    protocol = entry.get("protocol")
    if protocol is None:
        return "TCP"
    if not isinstance(protocol, str) or protocol not in PROTOCOL_NUMBERS:
        raise _Malformed("bad_protocol", f"protocol {protocol!r} is not TCP, UDP or SCTP")
    return protocol


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
            except OSError:
                pass
    raise _Malformed("bad_ip", f"{what} {value!r} is not an IP address")


def _ipv4(value) -> str:
    if _ip_version(value, "address") != 4:
        raise _Malformed("bad_ip", f"address {value!r} is not IPv4")
    return value
