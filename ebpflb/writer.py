"""Make the NAT maps equal to a DesiredState, writing only the difference, in an order that never
lets a packet see a frontend whose slots are not all filled:

  1. backend slots that are new or changed      (a growing frontend's new slots exist first)
  2. frontends that are new or changed          (count moves only over filled slots)
  3. service addresses that are new
  4. frontends that are gone
  5. backend slots that are gone                (a shrunk count no longer reaches them)
  6. service addresses that are gone

The writer mirrors what the maps hold (read once when it starts, then kept as it writes), so a
sync that changes nothing reads and writes nothing.
"""
import logging
from dataclasses import dataclass, field

from .core.model import Backend, DesiredState, Frontend, FrontendKey
from .maps import Maps
from .structs import ffi, ip_be, ip_str, new, port_be, port_int

log = logging.getLogger(__name__)

BackendSlot = tuple[int, int]   # (service id, ordinal)


@dataclass
class MapContents:
    frontends: dict[FrontendKey, Frontend] = field(default_factory=dict)
    backends: dict[BackendSlot, Backend] = field(default_factory=dict)
    service_ips: set[str] = field(default_factory=set)


@dataclass
class WriteStats:
    written: int = 0
    deleted: int = 0
    removed_backends: set[tuple[int, Backend]] = field(default_factory=set)   # (id, backend)

    @property
    def changed(self) -> bool:
        return bool(self.written or self.deleted)


def fe_key(k: FrontendKey):
    return new("struct nat_fe_key", addr=ip_be(k.addr), port=port_be(k.port), proto=k.proto)


def fe_value(f: Frontend):
    return new("struct nat_fe_value", id=f.svc_id, count=f.count, local=f.local, flags=f.flags)


def be_key(slot: BackendSlot):
    return new("struct nat_be_key", id=slot[0], ordinal=slot[1])


def be_value(b: Backend):
    return new("struct nat_be_value", addr=ip_be(b.addr), port=port_be(b.port))


def read_contents(maps: Maps) -> MapContents:
    contents = MapContents()
    for k, v in maps.nat_fe.items():
        contents.frontends[FrontendKey(ip_str(k.addr), port_int(k.port), k.proto)] = \
            Frontend(v.id, v.count, v.local, v.flags)
    for k, v in maps.nat_be.items():
        contents.backends[(k.id, k.ordinal)] = Backend(ip_str(v.addr), port_int(v.port))
    contents.service_ips = {ip_str(k[0]) for k, _ in maps.svc_ips.items()}
    return contents


def slots_of(desired: DesiredState) -> dict[BackendSlot, Backend]:
    return {(svc_id, ordinal): backend
            for svc_id, backends in desired.backends.items()
            for ordinal, backend in enumerate(backends)}


class MapWriter:
    def __init__(self, maps: Maps):
        self.maps = maps
        self.mirror = read_contents(maps)

    def apply(self, desired: DesiredState) -> WriteStats:
        stats = WriteStats()
        have = self.mirror
        want_slots = slots_of(desired)
        svc_ip_value = new("struct svc_ip_value")

        for slot, backend in want_slots.items():
            if have.backends.get(slot) != backend:
                self.maps.nat_be.update(be_key(slot), be_value(backend))
                stats.written += 1
        for key, frontend in desired.frontends.items():
            if have.frontends.get(key) != frontend:
                self.maps.nat_fe.update(fe_key(key), fe_value(frontend))
                stats.written += 1
        for addr in desired.service_ips - have.service_ips:
            self.maps.svc_ips.update(ffi.new("__u32 *", ip_be(addr)), svc_ip_value)
            stats.written += 1
        for key in have.frontends.keys() - desired.frontends.keys():
            self.maps.nat_fe.delete(fe_key(key))
            stats.deleted += 1
        for slot in have.backends.keys() - want_slots.keys():
            self.maps.nat_be.delete(be_key(slot))
            stats.deleted += 1
        for addr in have.service_ips - desired.service_ips:
            self.maps.svc_ips.delete(ffi.new("__u32 *", ip_be(addr)))
            stats.deleted += 1

        stats.removed_backends = backends_by_id(have.backends) - backends_by_id(want_slots)
        self.mirror = MapContents(dict(desired.frontends), want_slots, set(desired.service_ips))
        return stats


def backends_by_id(slots: dict[BackendSlot, Backend]) -> set[tuple[int, Backend]]:
    return {(slot[0], backend) for slot, backend in slots.items()}
