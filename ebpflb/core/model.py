"""What the maps should hold, in plain Python values. The writer turns these into map entries."""
from dataclasses import dataclass, field
from typing import NamedTuple


# slots=True on the value types: no __dict__ per object; tens of thousands of each live at scale.
def family_of(addr: str) -> int:
    """4 or 6 for an address (or CIDR) in the text form the core keeps; only IPv6 has colons."""
    return 6 if ":" in addr else 4


@dataclass(frozen=True, order=True, slots=True)
class ServicePortName:
    """One port of one Service in one address family: the unit that gets a service id (like
    kube-proxy's, whose proxier per family keeps its own). A dual-stack port has two ids: each
    family's frontends have their own backend set."""
    namespace: str
    name: str
    port: str       # the Service port's name, "" when unnamed
    protocol: str   # "TCP", "UDP" or "SCTP"
    family: int = 4   # 4 or 6: of the frontends and backends the id names

    def __str__(self) -> str:
        text = f"{self.namespace}/{self.name}:{self.port}" if self.port else f"{self.namespace}/{self.name}"
        return text if self.family == 4 else f"{text} (IPv6)"


@dataclass(frozen=True, order=True, slots=True)
class FrontendKey:
    addr: str       # IPv4 dotted quad or IPv6 canonical (compressed) text, of the family below
    port: int
    proto: int      # IP protocol number: 6 TCP, 17 UDP, 132 SCTP
    family: int = 4   # 4 or 6; the data plane programs family 4 only (sync/family.py)


@dataclass(frozen=True, slots=True)
class Frontend:
    svc_id: int
    count: int      # backends to choose from: ordinals 0..count-1; 0 = reject (drop if *_LOCAL flag)
    local: int      # how many of the backends are on this node (they take the low ordinals)
    flags: int      # NAT_FLG_* from bpf/structs.h
    # ids.owner_tag() of the service port holding the id (0: none given). What a restarted agent checks
    # before it gives the id back; bookkeeping, not what a packet sees: left out of comparisons (the
    # writer compares it itself).
    owner: int = field(default=0, compare=False)


class Backend(NamedTuple):   # a NamedTuple: a million of these are built at scale, quickly
    addr: str       # of its service id's family (ServicePortName.family)
    port: int


# Why an object is skipped: the values of ebpflb_objects_rejected's reason label, and no others.
REJECT_REASONS = frozenset({
    "missing_field",                 # a required field is absent, null or ""
    "bad_type",                      # a field of the wrong JSON type (a list for an object, a string for a bool...)
    "bad_value",                     # not one of the values the API allows (type, traffic policies, addressType)
    "bad_ip", "bad_cidr", "bad_port", "bad_protocol",
    "duplicate_port",                # two ports of one Service with the same name or the same number and protocol
    # Fine alone, but another object holds what it names:
    "duplicate_service", "duplicate_frontend", "duplicate_health_check_port",
    "no_free_id",                    # every service id is taken
    "map_full",                      # the maps are too full to take all its entries
})


@dataclass(frozen=True, slots=True)
class Rejected:
    """An object skipped as malformed: named in the log, counted in a metric by reason."""
    kind: str       # "Service" or "EndpointSlice"
    namespace: str
    name: str
    reason: str     # one of REJECT_REASONS
    detail: str     # human sentence for the log


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """What the healthCheckNodePort of an externalTrafficPolicy Local service answers on this node."""
    namespace: str
    name: str
    local_endpoints: int   # distinct local endpoint addresses that are ready; 0 -> 503


@dataclass
class DesiredState:
    frontends: dict[FrontendKey, Frontend] = field(default_factory=dict)
    backends: dict[int, tuple[Backend, ...]] = field(default_factory=dict)  # id -> by ordinal
    service_ips: frozenset[str] = frozenset()   # both families (family_of tells them apart)
    ids: dict[ServicePortName, int] = field(default_factory=dict)           # ids in use now
    rejected: list[Rejected] = field(default_factory=list)
    # id -> loadBalancerSourceRanges (CIDRs of the id's family, normalized), for ids with NAT_FLG_SRC_RANGES frontends
    src_ranges: dict[int, frozenset[str]] = field(default_factory=dict)
    health_checks: dict[int, HealthCheck] = field(default_factory=dict)     # healthCheckNodePort -> check
    affinity: dict[int, int] = field(default_factory=dict)   # id -> session affinity timeout (s), ClientIP only
    # (namespace, name) -> the addresses of service_ips it holds, also with no port (the tracker's split);
    # bookkeeping, not map contents: left out of comparisons
    service_ips_by_service: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict, compare=False)
