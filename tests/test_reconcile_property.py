"""Issue 15: the maps always equal the cluster. Random cluster histories through the agent's own
SyncSession over real pinned maps, with the agent killed and restarted at random points (the maps
stay, the tracker and writer start afresh), killed in the middle of a sync, and syncs that fail;
the cluster changes while no agent runs. After every restart and every sync the maps hold exactly
what the full computation says, entry for entry: no frontend, slot, generation, address, address
bit or source range more or less. Besides: an id that conntrack still names for a service port is
never another's, and a service port's counters count only its own packets."""
import dataclasses

from hypothesis import example, given
from hypothesis import strategies as st

from ebpflb.core.ids import GRACE_S, owner_tag
from ebpflb.core.services import desired_state
from ebpflb.datapath.libbpf import BPFError
from ebpflb.datapath.structs import ffi, new
from ebpflb.sync.addr_bits import WORD_BITS, addr_bit
from ebpflb.sync.session import SyncSession
from ebpflb.sync.writer import read_contents
from tests.malformed import fuzz_settings
from tests.test_malformed_maps import emptied

NODE, OTHER = "node-a", "node-b"
NODE_ADDRESSES = ("192.168.64.10",)
NAMES = "abcd"
ADDRS = [f"10.1.0.{i}" for i in range(1, 7)]


def service(name: str, number: int, proto: str, kind: str, local: bool, vip_shift: int, sticky: int = 0) -> dict:
    i = NAMES.index(name)
    vip = f"10.96.{vip_shift}.{i + 1}"   # a deleted service's address may come back with another name
    spec = {"type": kind, "clusterIP": vip, "clusterIPs": [vip],
            "ports": [{"name": "p", "port": number, "protocol": proto, "targetPort": 8080}]}
    if sticky:   # session affinity, with its timeout
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": sticky}}
    if kind != "ClusterIP":
        spec["ports"][0]["nodePort"] = 30000 + i
        spec["externalTrafficPolicy"] = "Local" if local else "Cluster"
    if kind == "LoadBalancer":
        spec["loadBalancerSourceRanges"] = [f"172.16.{i}.0/24"]
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name},
                "spec": spec, "status": {"loadBalancer": {"ingress": [{"ip": f"203.0.113.{i + 1}"}]}}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name}, "spec": spec}


def slice_(name: str, endpoints) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": "default", "name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "p", "port": 8080, "protocol": proto} for proto in ("TCP", "UDP")],
            "endpoints": [{"addresses": [a], "nodeName": n, "conditions": {"ready": True}} for a, n in endpoints]}


name = st.sampled_from(NAMES)
cluster_op = st.one_of(
    st.tuples(st.just("svc"), name, st.sampled_from([80, 443]), st.sampled_from(["TCP", "UDP"]),
              st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]), st.booleans(), st.integers(0, 1),
              st.sampled_from([0, 0, 60, 10800])),
    st.tuples(st.just("del-svc"), name),
    st.tuples(st.just("slice"), name, st.lists(st.tuples(st.sampled_from(ADDRS), st.sampled_from([NODE, OTHER])),
                                               max_size=4, unique_by=lambda e: e[0])),
    st.tuples(st.just("del-slice"), name),
)
running_op = st.one_of(
    cluster_op,
    st.just(("sync",)),
    st.tuples(st.just("fail"), st.integers(0, 12)),      # a sync fails after n writes; the agent goes on
    st.tuples(st.just("flow"), name),                    # a flow in conntrack for the service port
    st.tuples(st.just("traffic"), name),                 # a packet counted for it
    st.just(("expire",)),                                # conntrack empties
    st.just(("sweep",)),                                 # a conntrack scan frees quarantined ids
)
ending = st.one_of(st.just(("kill",)), st.tuples(st.just("crash"), st.integers(0, 12)))   # crash: mid-sync
# An agent run: it starts over the maps as they are, lives through changes, and dies; the cluster
# changes while no agent runs; the next run starts.
agent_run = st.tuples(st.lists(running_op, max_size=10), ending, st.lists(cluster_op, max_size=4))
history = st.tuples(st.lists(cluster_op, min_size=1, max_size=6), st.lists(agent_run, min_size=1, max_size=4))


def flatten(history) -> list[tuple]:
    first, runs = history
    ops = list(first)
    for running, end, down in runs:
        ops += [("restart",), *running, end, *down]
    return ops


class Fails(Exception):
    pass


class FailAfter:
    """A pinned map whose writes fail after `left[0]` of them (one entry at a time)."""

    def __init__(self, bpf_map, left):
        self.map, self.left = bpf_map, left

    def __getattr__(self, attr):
        return getattr(self.map, attr)

    def _tick(self):
        self.left[0] -= 1
        if self.left[0] < 0:
            raise Fails()

    def update(self, key, value, flags=0):
        self._tick()
        self.map.update(key, value, flags)

    def update_many(self, keys, values):
        for i in range(len(keys)):
            self.update(keys + i, values + i * self.map.ncpus)

    def delete(self, key):
        self._tick()
        return self.map.delete(key)

    def delete_many(self, keys):
        return sum(self.delete(keys + i) for i in range(len(keys)))


def failing(maps, n: int):
    left = [n]
    return dataclasses.replace(maps, **{m: FailAfter(getattr(maps, m), left) for m in
                                        ("nat_fe", "nat_be", "svc_ips", "src_ranges", "svc_addr_bits", "svc_counters",
                                         "affinity_svc", "affinity_be")})


def expected(services: dict, slices: dict, ids: dict) -> dict:
    """The full computation, by name: what the maps must hold."""
    state = desired_state(services.values(), slices.values(), node_name=NODE, known_ids={},
                          node_addresses=NODE_ADDRESSES)
    return by_name(state.frontends, {i: b for i, b in state.backends.items()}, state.service_ips,
                   state.src_ranges, {i: n for n, i in state.ids.items()}, state.affinity,
                   {i: {b: o for o, b in enumerate(state.backends.get(i, ()))} for i in state.affinity})


def by_name(frontends, backends, service_ips, src_ranges, name_of, affinity, members) -> dict:
    """Keyed by pin name: one entry for every map sync/keepers.py says the desired state decides."""
    bits = {addr_bit(a) for a in [*(k.addr for k in frontends), *service_ips]}
    return {"nat_fe": {k: (name_of[f.svc_id], f.count, f.local, f.flags) for k, f in frontends.items()},
            "nat_be": {name_of[i]: tuple(b) for i, b in backends.items() if b},
            "svc_ips": set(service_ips),
            "src_ranges": {name_of[i]: set(r) for i, r in src_ranges.items() if r},
            "svc_addr_bits": {w: sum(1 << (b % WORD_BITS) for b in bits if b // WORD_BITS == w)
                              for w in {b // WORD_BITS for b in bits}},
            "affinity_svc": {name_of[i]: t for i, t in affinity.items() if t},
            "affinity_be": {name_of[i]: m for i, m in members.items() if m}}


def held(maps, session) -> dict:
    """What the maps hold, by name (the names the session's tracker gave the ids), and checked
    for what no name shows: one generation per id, read by all its frontends, owners right."""
    contents = read_contents(maps)
    name_of = {i: n for n, i in session.tracker.state.ids.items()}
    for key, f in contents.frontends.items():
        assert f.svc_id in name_of, (key, f)
        assert f.owner == owner_tag(name_of[f.svc_id]), (key, f)
    gens = {}
    for key, f in contents.frontends.items():
        gens.setdefault(f.svc_id, set()).add(contents.generations[key])
    slots = contents.slots_by_id()
    for svc_id, by_gen in slots.items():
        assert list(by_gen) == list(gens.get(svc_id, ())), (svc_id, by_gen.keys(), gens.get(svc_id))
    words = {key[0]: value[0] for key, value in maps.svc_addr_bits.items() if value[0]}
    return {**by_name(contents.frontends, {i: next(iter(g.values())) for i, g in slots.items()},
                      contents.service_ips, contents.src_ranges, name_of, contents.affinity,
                      contents.affinity_members),
            "svc_addr_bits": words}


SVC_A, SVC_B = ("svc", "a", 80, "TCP", "NodePort", False, 0), ("svc", "b", 80, "TCP", "ClusterIP", False, 0)


@fuzz_settings(60)
@given(history=history)
# The scenario: two services deleted and one created while the agent is down.
@example(history=([SVC_A, ("slice", "a", [("10.1.0.1", NODE)]), SVC_B, ("svc", "c", 443, "UDP", "ClusterIP", False, 0)],
                  [([("sync",)], ("kill",), [("del-svc", "a"), ("del-svc", "b"), ("svc", "d", 80, "TCP", "ClusterIP",
                                                                                    False, 0)])]))
# A deleted service's counters are not the next owner's of its id.
@example(history=([SVC_A], [([("sync",), ("traffic", "a"), ("del-svc", "a"), ("sync",), ("sweep",), SVC_B, ("sync",)],
                             ("kill",), [])]))
# Nor its flows still in conntrack.
@example(history=([SVC_A], [([("sync",), ("flow", "a"), ("del-svc", "a"), ("sync",), ("sweep",), SVC_B, ("sync",)],
                             ("kill",), [])]))
# Killed between the writes of a new slot generation and its frontends' switch.
@example(history=([SVC_A, ("slice", "a", [("10.1.0.1", NODE), ("10.1.0.2", OTHER)])],
                  [([("sync",), ("slice", "a", [("10.1.0.3", OTHER), ("10.1.0.1", NODE), ("10.1.0.2", OTHER)])],
                    ("crash", 3), [("slice", "a", [("10.1.0.4", NODE)])])]))
def test_after_every_restart_and_sync_the_maps_equal_the_full_computation(loaded, history):
    ops = flatten(history)
    maps = emptied(loaded)
    for key, word in maps.svc_addr_bits.items():
        if word[0]:
            maps.svc_addr_bits.update(key, ffi.new("__u64 *", 0))
    zeros = ffi.new(f"struct svc_counters[{maps.svc_counters.ncpus}]")
    for svc_id in range(64):
        maps.svc_counters.update(ffi.new("__u32 *", svc_id), zeros)

    services, slices = {}, {}
    session = None
    clock = 0.0
    flows = {}      # ct key bytes -> the service port name it was made for
    counted = {}    # (name, id) -> packets counted for it

    def start():
        nonlocal session
        session = SyncSession(maps, NODE, node_addresses=NODE_ADDRESSES)
        session.tracker.replace_all(list(services.values()), list(slices.values()))
        sync()

    def sync():
        nonlocal clock
        clock += 0.1
        session.sync(clock)
        check()

    def sync_failing_after(writes: int) -> None:
        """A sync whose map writes fail after `writes` of them: the maps are left half written."""
        writer = session.writer
        writer.maps, writer.addr_bits.map = failing(maps, writes), failing(maps, writes).svc_addr_bits
        try:
            session.sync(clock)
        except Fails:
            pass
        writer.maps, writer.addr_bits.map = maps, maps.svc_addr_bits

    def check():
        state = session.tracker.state
        assert held(maps, session) == expected(services, slices, state.ids)
        name_of = {i: n for n, i in state.ids.items()}
        for key, value in maps.ct.items():
            owner = flows[bytes(ffi.buffer(key))]
            assert name_of.get(value.svc_id, owner) == owner, f"id {value.svc_id} of {owner}'s flow given to another"
        for n, i in state.ids.items():
            per_cpu = maps.svc_counters.lookup(ffi.new("__u32 *", i))
            assert sum(c.packets for c in per_cpu) == counted.get((n, i), 0), (n, i)

    for o in ops:
        kind = o[0]
        if kind in ("svc", "del-svc", "slice", "del-slice"):
            obj_name = o[1]
            if kind == "svc":
                services[obj_name] = obj = service(*o[1:])
                if session:
                    session.tracker.set_service(obj)
            elif kind == "del-svc":
                services.pop(obj_name, None)
                if session:
                    session.tracker.delete_service(("default", obj_name))
            elif kind == "slice":
                slices[obj_name] = obj = slice_(obj_name, o[2])
                if session:
                    session.tracker.set_slice(obj)
            else:
                slices.pop(obj_name, None)
                if session:
                    session.tracker.delete_slice(("default", f"{obj_name}-1"))
        elif kind == "sync" and session:
            sync()
        elif kind == "fail" and session:
            sync_failing_after(o[1])
            sync()
        elif kind == "crash" and session:
            sync_failing_after(o[1])
            session = None
        elif kind == "kill":
            session = None
        elif kind == "restart" and not session:
            start()
        elif kind in ("flow", "traffic") and session:
            port_name = next((n for n in session.tracker.state.ids if n.name == o[1]), None)
            if port_name is None:
                continue
            svc_id = session.tracker.state.ids[port_name]
            if kind == "flow":
                key = new("struct ct_key", src_addr=len(flows) + 1, dst_addr=svc_id, src_port=1, dst_port=2, proto=6)
                maps.ct.update(key, new("struct ct_value", type=1, svc_id=svc_id))
                flows[bytes(ffi.buffer(key))] = port_name
            else:
                per_cpu = maps.svc_counters.lookup(ffi.new("__u32 *", svc_id))
                per_cpu[0].packets += 1
                values = ffi.new(f"struct svc_counters[{maps.svc_counters.ncpus}]", [c[0] for c in per_cpu])
                maps.svc_counters.update(ffi.new("__u32 *", svc_id), values)
                counted[(port_name, svc_id)] = counted.get((port_name, svc_id), 0) + 1
        elif kind == "expire":
            for key, _ in maps.ct.items():
                maps.ct.delete(key)
        elif kind == "sweep" and session:
            clock += GRACE_S
            session.release({v.svc_id for _, v in maps.ct.items()}, clock)
    if not session:
        start()
    else:
        sync()
    # A restart over unchanged state writes nothing.
    session = SyncSession(maps, NODE, node_addresses=NODE_ADDRESSES)
    session.tracker.replace_all(list(services.values()), list(slices.values()))
    _, stats = session.sync(clock)
    assert not stats.changed, stats
