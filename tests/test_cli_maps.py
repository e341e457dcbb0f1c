"""The real `ebpflb` CLI (a subprocess) reading the maps of real loaded programs: NAT entries written
by MapWriter, conntrack entries made by packets through the programs (BPF_PROG_TEST_RUN)."""
import json
import re
import subprocess
import sys
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP

from ebpflb.core.model import Backend, DesiredState, Frontend, FrontendKey
from ebpflb.datapath.structs import C, LAYOUT_VERSION, ffi
from ebpflb.sync.writer import MapWriter
from tests.test_datapath_packets import A0, B, C_POD, SYN, VIP, from_pod, program, run, to_pod

EBPFLB = str(Path(sys.executable).parent / "ebpflb")
AGO = r"Active ago \d+(\.\d)?s"


def cli(pin_dir, *args, expect_rc=0) -> subprocess.CompletedProcess:
    result = subprocess.run([EBPFLB, *args, "--pin-dir", pin_dir], capture_output=True, text=True, timeout=30)
    assert result.returncode == expect_rc, result.stderr
    return result


def out(dp, *args) -> list[str]:
    return cli(dp.pin_dir, *args).stdout.splitlines()


def services(dp):
    """VIP:8080/TCP -> A0, B (external-local); VIP:5353/UDP -> B; VIP:9090/TCP with its one slot empty."""
    MapWriter(dp.maps).apply(DesiredState(
        frontends={FrontendKey(VIP, 8080, 6): Frontend(1, 2, 0, C.NAT_FLG_EXTERNAL_LOCAL),
                   FrontendKey(VIP, 5353, 17): Frontend(2, 1, 0, 0),
                   FrontendKey(VIP, 9090, 6): Frontend(3, 1, 0, 0)},
        backends={1: (Backend(A0, 8080), Backend(B, 8080)), 2: (Backend(B, 5353),)},
        service_ips=frozenset([VIP])))


def flows(dp):
    """An established TCP flow C -> VIP:8080 and a UDP flow C -> VIP:5353, both to B (4 entries)."""
    program(dp, (VIP, 8080, 6, [B], 0), (VIP, 5353, 17, [B], 0))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(**SYN)))
    run(dp, "to_workload", to_pod(IP(src=B, dst=C_POD) / TCP(sport=8080, dport=40000, flags="SA")))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40000, dport=8080, flags="A")))
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / UDP(sport=5000, dport=5353)))


def test_nat_dump(dp):
    services(dp)
    assert out(dp, "nat", "dump") == [
        f"{VIP} port 5353 proto 17 id 2 count 1 local 0",
        f"\t2:0\t {B}:5353",
        f"{VIP} port 8080 proto 6 id 1 count 2 local 0 flags external-local",
        f"\t1:0\t {A0}:8080",
        f"\t1:1\t {B}:8080",
        f"{VIP} port 9090 proto 6 id 3 count 1 local 0",
        "\t3:0\t is missing",
    ]


def test_nat_dump_of_one_frontend_by_protocol_number_or_name(dp):
    services(dp)
    assert out(dp, "nat", "dump", VIP, "5353", "udp") == [f"{VIP} port 5353 proto 17 id 2 count 1 local 0",
                                                          f"\t2:0\t {B}:5353"]
    assert out(dp, "nat", "dump", VIP, "5353", "17") == out(dp, "nat", "dump", VIP, "5353", "UDP")
    assert out(dp, "nat", "dump", VIP, "5353", "tcp") == []
    refused = cli(dp.pin_dir, "nat", "dump", VIP, "5353", expect_rc=1)
    assert refused.stderr.strip() == "ebpflb nat dump: give IP PORT PROTO together, or none of them"


def test_nat_dump_json(dp):
    services(dp)
    records = [json.loads(line) for line in out(dp, "nat", "dump", "--json")]
    assert records == [
        {"address": VIP, "port": 5353, "proto": 17, "id": 2, "count": 1, "local": 0, "flags": [],
         "backends": [{"ordinal": 0, "address": B, "port": 5353}]},
        {"address": VIP, "port": 8080, "proto": 6, "id": 1, "count": 2, "local": 0, "flags": ["external-local"],
         "backends": [{"ordinal": 0, "address": A0, "port": 8080}, {"ordinal": 1, "address": B, "port": 8080}]},
        {"address": VIP, "port": 9090, "proto": 6, "id": 3, "count": 1, "local": 0, "flags": [],
         "backends": [{"ordinal": 0, "missing": True}]},
    ]
    assert [json.loads(line) for line in out(dp, "nat", "dump", VIP, "9090", "tcp", "--json")] == records[2:]


def test_conntrack_dump(dp):
    flows(dp)
    lines = out(dp, "conntrack", "dump")
    assert len(lines) == 2
    assert re.fullmatch(rf"TCP {C_POD}:40000 -> {VIP}:8080 -> {B}:8080  {AGO} ESTABLISHED", lines[0]), lines
    assert re.fullmatch(rf"UDP {C_POD}:5000 -> {VIP}:5353 -> {B}:5353  {AGO}", lines[1]), lines


def test_conntrack_dump_raw_shows_both_halves(dp):
    flows(dp)
    lines = out(dp, "conntrack", "dump", "--raw")
    stamp = r"\d+ \(\d+(\.\d)?s ago\)"
    assert len(lines) == 4
    assert re.fullmatch(
        rf"ConntrackKey{{proto=6 {B}:8080 -> {C_POD}:40000}} -> Entry{{Type:NAT_REV, Created:{stamp}, "
        rf"LastSeen:{stamp}, Flags:<none>, TCP:SYN_FWD\|SYN_REV\|ACK_REV\|ACK_FWD, SvcID:1, NAT:{VIP}:8080, SNAT:0.0.0.0, "
        rf"Twin:{{proto=6 {C_POD}:40000 -> {VIP}:8080}}}}", lines[0]), lines[0]
    assert re.fullmatch(
        rf"ConntrackKey{{proto=6 {C_POD}:40000 -> {VIP}:8080}} -> Entry{{Type:NAT_FWD, Created:{stamp}, "
        rf"LastSeen:{stamp}, Flags:<none>, TCP:ACK_FWD, SvcID:1, NAT:{B}:8080, SNAT:0.0.0.0, "
        rf"Twin:{{proto=6 {B}:8080 -> {C_POD}:40000}}}}", lines[1]), lines[1]
    assert [line.split("}")[0] for line in lines[2:]] == [f"ConntrackKey{{proto=17 {B}:5353 -> {C_POD}:5000",
                                                          f"ConntrackKey{{proto=17 {C_POD}:5000 -> {VIP}:5353"]


def test_conntrack_dump_json(dp):
    flows(dp)
    records = [json.loads(line) for line in out(dp, "conntrack", "dump", "--json")]
    for record in records:
        assert 0 <= record.pop("last_seen_ago_s") < 30
    assert records == [
        {"proto": 6, "client": C_POD, "client_port": 40000, "service": VIP, "service_port": 8080,
         "backend": B, "backend_port": 8080, "tcp_state": "ESTABLISHED"},
        {"proto": 17, "client": C_POD, "client_port": 5000, "service": VIP, "service_port": 5353,
         "backend": B, "backend_port": 5353, "tcp_state": None},
    ]


def test_conntrack_stats(dp):
    flows(dp)
    run(dp, "from_workload", from_pod(IP(src=C_POD, dst=VIP) / TCP(sport=40001, dport=8080, flags="S")))
    assert out(dp, "conntrack", "stats") == [f"entries: 6 of {C.CT_MAX}", "NAT flows: 3", "TCP ESTABLISHED: 1",
                                             "TCP SYN-SENT: 1", "TCP CLOSED: 0", "TCP RESET: 0"]
    assert [json.loads(line) for line in out(dp, "conntrack", "stats", "--json")] == [
        {"entries": 6, "capacity": C.CT_MAX, "nat_flows": 3,
         "tcp_states": {"established": 1, "syn_sent": 1, "closed": 0, "reset": 0}}]


def test_conntrack_clean_expires_by_the_given_timeouts(dp):
    flows(dp)
    assert out(dp, "conntrack", "clean") == ["removed 0 conntrack entries"]
    assert out(dp, "conntrack", "clean", "--ct-timeouts", "udp=0.001") == ["removed 2 conntrack entries"]
    assert [line.split()[0] for line in out(dp, "conntrack", "dump")] == ["TCP"]
    assert len(dp.maps.ct.items()) == 2


def test_conntrack_remove_between_two_addresses_either_way(dp):
    flows(dp)
    assert out(dp, "conntrack", "remove", "udp", VIP, C_POD) == ["removed 2 conntrack entries"]
    assert out(dp, "conntrack", "remove", "17", VIP, C_POD) == ["removed 0 conntrack entries"]
    assert out(dp, "conntrack", "remove", "6", B, C_POD) == ["removed 2 conntrack entries"]   # the NAT_REV key
    assert dp.maps.ct.items() == []


def test_drops_by_reason(dp):
    program(dp, (VIP, 8080, 6, [B], 0))
    ping = from_pod(IP(src=C_POD, dst=VIP) / ICMP())

    def counted():
        return {r["reason"]: (r["packets"], r["bytes"]) for r in map(json.loads, out(dp, "drops", "--json"))}

    before = counted()
    for _ in range(2):
        run(dp, "from_workload", ping)
    after = counted()
    assert set(after) == set(before) and "no-route" in after   # every reason, the zero ones too
    assert {r: (p - before[r][0], b - before[r][1]) for r, (p, b) in after.items() if (p, b) != before[r]} == \
        {"not-l4-to-service": (2, 2 * len(ping))}
    lines = out(dp, "drops")
    assert len(lines) == len(after)
    packets, octets = after["not-l4-to-service"]
    assert any(re.fullmatch(rf"not-l4-to-service +{packets} packets +{octets} bytes", line) for line in lines), lines


def test_no_maps_at_the_pin_dir_is_one_line_and_exit_1(tmp_path):
    for verb in (["nat", "dump"], ["conntrack", "dump"], ["conntrack", "stats"]):
        result = cli(str(tmp_path), *verb, expect_rc=1)
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1
        assert str(tmp_path) in result.stderr and "ebpflb has not run on this node" in result.stderr


def test_maps_of_another_layout_version_are_refused_naming_both(dp):
    key = ffi.new("__u32 *", 0)
    config = dp.maps.read_config()
    try:
        dp.maps.config.update(key, ffi.new("struct config *", {"layout_version": LAYOUT_VERSION + 98}))
        for verb in (["nat", "dump"], ["conntrack", "dump"]):
            result = cli(dp.pin_dir, *verb, expect_rc=1)
            assert result.stdout == ""
            assert result.stderr.count("\n") == 1
            assert f"layout version {LAYOUT_VERSION + 98}, this ebpflb reads version {LAYOUT_VERSION}" \
                in result.stderr, result.stderr
    finally:
        dp.maps.config.update(key, config)


def test_affinity_dump(dp):
    """Entries the programs made, one line per (service port, client), with what a new connection does."""
    desired = DesiredState(frontends={FrontendKey(VIP, 8080, 6): Frontend(1, 2, 0, 0),
                                      FrontendKey("192.168.64.6", 30080, 6): Frontend(1, 2, 0, C.NAT_FLG_EXTERNAL)},
                           backends={1: (Backend(A0, 8080), Backend(B, 8080))}, service_ips=frozenset([VIP]),
                           affinity={1: 60})
    writer = MapWriter(dp.maps)
    writer.apply(desired)
    for client in (C_POD, "10.200.2.3"):
        run(dp, "from_workload", from_pod(IP(src=client, dst=VIP) / TCP(**SYN)))
    lines = out(dp, "affinity", "dump")
    assert len(lines) == 2
    for line, client in zip(lines, (C_POD, "10.200.2.3")):
        assert re.fullmatch(rf"client {client} svc proto 6 {VIP}:8080 -> 10\.200\.[01]\.2:8080 ts \d+  "
                            r"last connection \d+(\.\d+)?(ms|s) ago, timeout 60s, live", line), line
    records = [json.loads(line) for line in out(dp, "affinity", "dump", "--json")]
    assert [(r["client"], r["id"], r["service"], r["service_port"], r["proto"], r["timeout_s"], r["state"])
            for r in records] == [(C_POD, 1, VIP, 8080, 6, 60, "live"), ("10.200.2.3", 1, VIP, 8080, 6, 60, "live")]
    assert {r["backend"] for r in records} <= {A0, B} and all(r["last_connection_ago_s"] < 30 for r in records)
    writer.apply(DesiredState(frontends=desired.frontends, backends=desired.backends,
                              service_ips=desired.service_ips))   # affinity switched off
    assert {json.loads(line)["state"] for line in out(dp, "affinity", "dump", "--json")} == {"affinity off"}
