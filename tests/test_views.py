"""Golden output of the pure views over hand-made map contents: what `ebpflb nat dump` and
`ebpflb conntrack dump|stats` print, byte for byte."""
import pytest

from ebpflb.core.model import Backend, Frontend, FrontendKey
from ebpflb.datapath.structs import C, ip_be, new, port_be
from ebpflb.views.conntrack import (conntrack_stats, flow_line, flow_lines, flow_records, go_duration,
                                    raw_lines, stats_lines)
from ebpflb.views.drops import drop_lines, drop_records, drop_totals
from ebpflb.views.nat import nat_dump_lines, nat_dump_records

FRONTENDS = {
    FrontendKey("10.96.0.10", 53, 17): Frontend(3, 1, 0, 0),
    FrontendKey("10.96.0.2", 8080, 6): Frontend(1, 2, 1, C.NAT_FLG_INTERNAL_LOCAL | C.NAT_FLG_EXTERNAL_LOCAL),
    FrontendKey("10.96.0.2", 80, 6): Frontend(2, 2, 0, C.NAT_FLG_EXTERNAL_LOCAL),
    FrontendKey("10.96.0.2", 80, 17): Frontend(4, 0, 0, 0),
}
BACKENDS = {(1, 0): Backend("10.200.0.2", 8080), (1, 1): Backend("10.200.1.2", 8080),
            (2, 0): Backend("10.200.0.2", 80), (3, 0): Backend("10.200.1.3", 53)}


def test_nat_dump_sorts_by_address_port_proto_and_names_flags_and_missing_slots():
    assert nat_dump_lines(FRONTENDS, BACKENDS) == [
        "10.96.0.2 port 80 proto 6 id 2 count 2 local 0 flags external-local",
        "\t2:0\t 10.200.0.2:80",
        "\t2:1\t is missing",
        "10.96.0.2 port 80 proto 17 id 4 count 0 local 0",
        "10.96.0.2 port 8080 proto 6 id 1 count 2 local 1 flags external-local, internal-local",
        "\t1:0\t 10.200.0.2:8080",
        "\t1:1\t 10.200.1.2:8080",
        "10.96.0.10 port 53 proto 17 id 3 count 1 local 0",
        "\t3:0\t 10.200.1.3:53",
    ]


def test_nat_dump_of_one_frontend_and_as_records():
    only = FrontendKey("10.96.0.2", 80, 6)
    assert nat_dump_lines(FRONTENDS, BACKENDS, only) == [
        "10.96.0.2 port 80 proto 6 id 2 count 2 local 0 flags external-local",
        "\t2:0\t 10.200.0.2:80",
        "\t2:1\t is missing",
    ]
    assert nat_dump_records(FRONTENDS, BACKENDS, only) == [
        {"address": "10.96.0.2", "port": 80, "proto": 6, "id": 2, "count": 2, "local": 0,
         "flags": ["external-local"],
         "backends": [{"ordinal": 0, "address": "10.200.0.2", "port": 80}, {"ordinal": 1, "missing": True}]},
    ]
    assert nat_dump_lines(FRONTENDS, BACKENDS, FrontendKey("10.96.0.9", 80, 6)) == []


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (0.5, "0.5s"), (1.2, "1.2s"), (59.9, "59.9s"), (59.97, "1m0s"), (60, "1m0s"),
                                          (184, "3m4s"), (3605, "1h0m5s"), (-1, "0s")])
def test_go_duration(seconds, text):
    assert go_duration(seconds) == text


NOW = 10_000 * 10**9


def ct_key(src, sport, dst, dport, proto):
    return new("struct ct_key", src_addr=ip_be(src), src_port=port_be(sport), dst_addr=ip_be(dst),
               dst_port=port_be(dport), proto=proto)


def nat_flow(client, cport, vip, vport, backend, bport, proto=6, tcp_seen=0, ago_s=1.2, svc_id=1, hairpin=None):
    """Both halves of a NATed flow as from_workload writes them ([fwd, rev] (key, value) pairs)."""
    reply_dst = hairpin or client
    fwd_key = ct_key(client, cport, vip, vport, proto)
    rev_key = ct_key(backend, bport, reply_dst, cport, proto)
    seen = NOW - int(ago_s * 1e9)
    common = dict(created_ns=seen - 10**9, last_seen_ns=seen, svc_id=svc_id,
                  flags=C.CT_FLAG_SNAT if hairpin else 0)
    fwd = new("struct ct_value", type=C.CT_TYPE_NAT_FWD, nat_addr=ip_be(backend), nat_port=port_be(bport),
              snat_addr=ip_be(hairpin) if hairpin else 0, tcp_seen=tcp_seen & C.CT_TCP_ACK_FWD, twin=rev_key[0],
              **common)
    rev = new("struct ct_value", type=C.CT_TYPE_NAT_REV, nat_addr=ip_be(vip), nat_port=port_be(vport),
              snat_addr=ip_be(client) if hairpin else 0, tcp_seen=tcp_seen, twin=fwd_key[0], **common)
    return [(fwd_key, fwd), (rev_key, rev)]


def plain(src, sport, dst, dport, proto, ago_s):
    value = new("struct ct_value", created_ns=NOW, last_seen_ns=NOW - int(ago_s * 1e9))
    return ct_key(src, sport, dst, dport, proto), value


def lines_of(*entries):
    return flow_lines([e for group in entries for e in (group if isinstance(group, list) else [group])], NOW)


ESTABLISHED = C.CT_TCP_SYN_FWD | C.CT_TCP_SYN_REV | C.CT_TCP_ACK_FWD


@pytest.mark.parametrize("tcp_seen,state", [
    (C.CT_TCP_SYN_FWD, "SYN-SENT"),
    (C.CT_TCP_SYN_FWD | C.CT_TCP_SYN_REV, "SYN-SENT"),   # half-open: the backend answered, the client did not
    (C.CT_TCP_SYN_FWD | C.CT_TCP_ACK_FWD, "SYN-SENT"),   # an ACK nobody answered
    (ESTABLISHED, "ESTABLISHED"),
    (C.CT_TCP_SYN_FWD | C.CT_TCP_ACK_REV | C.CT_TCP_ACK_FWD, "ESTABLISHED"),
    (ESTABLISHED | C.CT_TCP_FIN_FWD, "ESTABLISHED"),
    (ESTABLISHED | C.CT_TCP_FIN_FWD | C.CT_TCP_FIN_REV, "CLOSED"),
    (ESTABLISHED | C.CT_TCP_RST, "RESET"),
])
def test_a_nat_flow_is_one_line_from_client_through_service_to_backend(tcp_seen, state):
    flow = nat_flow("10.200.2.2", 40000, "10.96.0.2", 8080, "10.200.1.2", 8080, tcp_seen=tcp_seen)
    assert lines_of(flow) == [f"TCP 10.200.2.2:40000 -> 10.96.0.2:8080 -> 10.200.1.2:8080  Active ago 1.2s {state}"]
    (fwd_key, fwd), (rev_key, rev) = flow
    assert flow_line(fwd_key, fwd, rev, NOW) is None


def test_protocol_names_durations_and_sorted_order():
    assert lines_of(
        nat_flow("10.200.2.2", 5000, "10.96.0.10", 53, "10.200.1.3", 53, proto=17, ago_s=59.9),
        plain("10.200.2.2", 7, "10.200.0.2", 9, 47, 3605),
        plain("10.200.2.2", 0, "10.200.0.2", 0, 1, 0.5),
        nat_flow("10.200.0.3", 41000, "10.96.0.2", 8080, "10.200.0.2", 8080, tcp_seen=ESTABLISHED, ago_s=184),
    ) == [
        "ICMP 10.200.2.2:0 -> 10.200.0.2:0  Active ago 0.5s",
        "TCP 10.200.0.3:41000 -> 10.96.0.2:8080 -> 10.200.0.2:8080  Active ago 3m4s ESTABLISHED",
        "UDP 10.200.2.2:5000 -> 10.96.0.10:53 -> 10.200.1.3:53  Active ago 59.9s",
        "Proto-47 10.200.2.2:7 -> 10.200.0.2:9  Active ago 1h0m5s",
    ]


def test_the_newer_half_sets_active_ago():
    (fwd_key, fwd), rev = nat_flow("10.200.2.2", 40000, "10.96.0.2", 8080, "10.200.1.2", 8080, ago_s=30)
    fwd.last_seen_ns = NOW - 5 * 10**8
    assert lines_of([(fwd_key, fwd), rev])[0].endswith("Active ago 0.5s SYN-SENT")


def test_hairpin_flow_names_the_client_by_its_snat_address():
    flow = nat_flow("10.200.0.2", 40000, "10.96.0.2", 8080, "10.200.0.2", 8080, tcp_seen=ESTABLISHED,
                    hairpin="169.254.42.1")
    assert lines_of(flow) == ["TCP 10.200.0.2:40000 -> 10.96.0.2:8080 -> 10.200.0.2:8080  Active ago 1.2s ESTABLISHED"]


def test_raw_lines_show_both_halves_and_every_field():
    flow = nat_flow("10.200.0.2", 40000, "10.96.0.2", 8080, "10.200.0.2", 8080, tcp_seen=ESTABLISHED,
                    hairpin="169.254.42.1", svc_id=2)
    seen, created = NOW - 12 * 10**8, NOW - 22 * 10**8
    assert raw_lines(flow, NOW) == [
        "ConntrackKey{proto=6 10.200.0.2:8080 -> 169.254.42.1:40000} -> Entry{Type:NAT_REV, "
        f"Created:{created} (2.2s ago), LastSeen:{seen} (1.2s ago), Flags:SNAT, TCP:SYN_FWD|SYN_REV|ACK_FWD, SvcID:2, "
        "NAT:10.96.0.2:8080, SNAT:10.200.0.2, Twin:{proto=6 10.200.0.2:40000 -> 10.96.0.2:8080}}",
        "ConntrackKey{proto=6 10.200.0.2:40000 -> 10.96.0.2:8080} -> Entry{Type:NAT_FWD, "
        f"Created:{created} (2.2s ago), LastSeen:{seen} (1.2s ago), Flags:SNAT, TCP:ACK_FWD, SvcID:2, "
        "NAT:10.200.0.2:8080, SNAT:169.254.42.1, Twin:{proto=6 10.200.0.2:8080 -> 169.254.42.1:40000}}",
    ]


def test_flow_records():
    flows = nat_flow("10.200.2.2", 40000, "10.96.0.2", 8080, "10.200.1.2", 8080, tcp_seen=C.CT_TCP_SYN_FWD) + \
        nat_flow("10.200.2.2", 5000, "10.96.0.10", 53, "10.200.1.3", 53, proto=17, ago_s=0.5)
    assert flow_records(flows, NOW) == [
        {"proto": 6, "client": "10.200.2.2", "client_port": 40000, "service": "10.96.0.2", "service_port": 8080,
         "backend": "10.200.1.2", "backend_port": 8080, "last_seen_ago_s": 1.2, "tcp_state": "SYN-SENT"},
        {"proto": 17, "client": "10.200.2.2", "client_port": 5000, "service": "10.96.0.10", "service_port": 53,
         "backend": "10.200.1.3", "backend_port": 53, "last_seen_ago_s": 0.5, "tcp_state": None},
    ]


def test_stats_count_entries_nat_flows_and_tcp_states():
    entries = (nat_flow("10.200.2.2", 1, "10.96.0.2", 8080, "10.200.1.2", 8080, tcp_seen=ESTABLISHED)
               + nat_flow("10.200.2.2", 2, "10.96.0.2", 8080, "10.200.1.2", 8080, tcp_seen=ESTABLISHED)
               + nat_flow("10.200.2.2", 3, "10.96.0.2", 8080, "10.200.1.2", 8080, tcp_seen=C.CT_TCP_RST)
               + nat_flow("10.200.2.2", 4, "10.96.0.10", 53, "10.200.1.3", 53, proto=17))
    stats = conntrack_stats(entries, 524288)
    assert stats == {"entries": 8, "capacity": 524288, "nat_flows": 4,
                     "tcp_states": {"established": 2, "syn_sent": 0, "closed": 0, "reset": 1}}
    assert stats_lines(stats) == ["entries: 8 of 524288", "NAT flows: 4", "TCP ESTABLISHED: 2",
                                  "TCP SYN-SENT: 0", "TCP CLOSED: 0", "TCP RESET: 1"]


@pytest.mark.parametrize("proto,name", [(6, "TCP"), (17, "UDP"), (1, "ICMP"), (58, "ICMP6"), (132, "Proto-132"), (47, "Proto-47")])
def test_conntrack_protocol_names_are_calicos(proto, name):
    from ebpflb.views.conntrack import proto_name
    assert proto_name(proto) == name


def test_drops_sum_the_cpus_name_every_reason_and_keep_an_unknown_one_that_counted():
    from ebpflb.views.drops import REASONS
    def per_cpu(*pairs):
        return [new("struct drop_counters", packets=p, bytes=b) for p, b in pairs]

    entries = [((C.DROP_SOURCE_RANGE,), per_cpu((2, 120), (1, 60))),
               ((C.DROP_NO_ROUTE,), per_cpu((0, 0), (0, 0))),
               ((17,), per_cpu((1, 90), (0, 0))),        # a reason a newer program knows
               ((18,), per_cpu((0, 0), (0, 0)))]
    totals = drop_totals(entries)
    assert totals["source-range"] == (3, 180) and totals["no-route"] == (0, 0) and totals["reason-17"] == (1, 90)
    assert "reason-18" not in totals and list(totals)[:2] == ["no-local-endpoint", "no-endpoints"]
    assert len(totals) == len(REASONS) + 1              # every reason, and the unknown one
    lines = drop_lines(totals)
    assert lines[4] == "source-range                    3 packets             180 bytes"
    assert drop_records(totals)[4] == {"reason": "source-range", "packets": 3, "bytes": 180}



def test_affinity_dump_names_the_service_by_its_cluster_ip_and_says_what_a_new_connection_does():
    from ebpflb.views.affinity import affinity_lines, affinity_records
    now = 5_000_000_000_000
    frontends = {**FRONTENDS, FrontendKey("192.168.64.6", 30080, 6): Frontend(1, 2, 1, C.NAT_FLG_EXTERNAL)}

    def entry(svc_id, client, backend, port, ago_s):
        return (new("struct affinity_key", svc_id=svc_id, client_addr=ip_be(client)),
                new("struct affinity_value", last_used_ns=now - int(ago_s * 1e9), backend_addr=ip_be(backend),
                    backend_port=port_be(port)))

    entries = [entry(1, "10.200.2.2", "10.200.1.2", 8080, 1.5), entry(1, "10.200.2.10", "10.200.0.2", 8080, 61),
               entry(1, "10.200.2.3", "10.200.0.9", 8080, 2), entry(3, "10.200.2.2", "10.200.1.3", 53, 2),
               entry(9, "10.200.2.2", "10.200.1.3", 53, 2)]
    members = {1: {Backend("10.200.0.2", 8080): 0, Backend("10.200.1.2", 8080): 1}, 3: {Backend("10.200.1.3", 53): 0}}
    records = affinity_records(entries, frontends, {1: 60, 3: 10800}, members, now)
    assert affinity_lines(records) == [
        "client 10.200.2.2 svc proto 6 10.96.0.2:8080 -> 10.200.1.2:8080 ts 4998500000000  "
        "last connection 1.5s ago, timeout 60s, live",
        "client 10.200.2.3 svc proto 6 10.96.0.2:8080 -> 10.200.0.9:8080 ts 4998000000000  "
        "last connection 2s ago, timeout 60s, backend gone",
        "client 10.200.2.10 svc proto 6 10.96.0.2:8080 -> 10.200.0.2:8080 ts 4939000000000  "
        "last connection 1m1s ago, timeout 60s, expired",
        "client 10.200.2.2 svc proto 17 10.96.0.10:53 -> 10.200.1.3:53 ts 4998000000000  "
        "last connection 2s ago, timeout 10800s, live",
        "client 10.200.2.2 svc id 9 (no frontend) -> 10.200.1.3:53 ts 4998000000000  "
        "last connection 2s ago, timeout 0s, affinity off",
    ]
    assert records[0] == {"client": "10.200.2.2", "id": 1, "proto": 6, "service": "10.96.0.2", "service_port": 8080,
                          "backend": "10.200.1.2", "backend_port": 8080, "ts": 4998500000000,
                          "last_connection_ago_s": 1.5, "timeout_s": 60, "state": "live"}
