"""The `ebpflb` command: thin verbs over the agent, the maps and the views."""
import argparse
import ipaddress
import json
import logging
import os
import shutil
import sys
import time

from ebpflb.paths import DEFAULT_PIN_DIR


def _open_maps(pin_dir: str):
    from ebpflb.datapath.maps import LayoutMismatch, Maps, MapsNotFound
    try:
        return Maps.open(pin_dir)
    except (MapsNotFound, LayoutMismatch) as err:
        sys.exit(f"ebpflb: {err}")


def cmd_agent(args) -> None:
    from ebpflb.agent.main import AgentConfig, run_agent
    from ebpflb.datapath.loader import DatapathOptions, MapSizeMismatch
    from ebpflb.datapath.maps import LayoutMismatch
    from ebpflb.datapath.cgroup import CgroupError
    if not args.node_name:
        sys.exit("ebpflb agent: --node-name (or $NODE_NAME) is required")
    if args.manifests and args.kubeconfig:
        sys.exit("ebpflb agent: --manifests and --kubeconfig exclude each other")
    config = AgentConfig(node_name=args.node_name, manifests=args.manifests, kubeconfig=args.kubeconfig,
                         pin_dir=args.pin_dir, workload_ifaces=args.workload_ifaces,
                         proxy_name=args.proxy_name, hairpin_addr=args.hairpin_addr,
                         icmp_rate=args.icmp_rate, icmp_burst=args.icmp_burst,
                         ct_timeouts=args.ct_timeouts, sweep_interval=args.ct_sweep_interval,
                         min_sync_period=args.min_sync_period, metrics_addr=args.metrics_addr or None,
                         healthz_addr=args.healthz_addr or None, healthz_timeout=args.healthz_timeout,
                         uplinks=tuple(filter(None, args.uplinks.split(","))) if args.uplinks is not None else None,
                         nodeport_addresses=tuple(filter(None, args.nodeport_addresses.split(","))),
                         xdp=args.xdp, socket_lb=args.socket_lb == "on",
                         cgroup_root=args.cgroup_root, localhost_nodeports=args.localhost_nodeports,
                         datapath=DatapathOptions(ct_map_max=args.ct_map_max, frontend_map_max=args.frontend_map_max,
                                                  backend_map_max=args.backend_map_max,
                                                  reject_no_endpoints=args.no_endpoints == "reject",
                                                  trace=args.bpf_trace))
    try:
        run_agent(config)
    except (LayoutMismatch, MapSizeMismatch, CgroupError) as err:
        sys.exit(f"ebpflb agent: {err}")


def cmd_cleanup(args) -> None:
    from pyroute2 import IPRoute
    from ebpflb.datapath.attach import detach_all
    from ebpflb.datapath.cgroup import CgroupError, default_cgroup_root, detach, resolve_cgroup_root
    with IPRoute() as ipr:
        touched = detach_all(ipr)
    print(f"detached from {len(touched)} interfaces" + (f": {', '.join(touched)}" if touched else ""))
    try:
        root = resolve_cgroup_root(args.cgroup_root) if args.cgroup_root else default_cgroup_root(mount=False)
    except CgroupError as err:
        sys.exit(f"ebpflb cleanup: {err}")
    hooks = detach(args.pin_dir, root, by_name=args.cgroup_root is not None)
    print(f"detached {hooks} host-socket hooks" + (f" from cgroup {root}" if root else ""))
    if os.path.isdir(args.pin_dir):
        shutil.rmtree(args.pin_dir)
        print(f"removed pins in {args.pin_dir}")


def print_each(lines) -> None:
    for line in lines:
        print(line)


def as_json(records: list[dict]) -> list[str]:
    return [json.dumps(record) for record in records]


def cmd_nat_dump(args) -> None:
    from ebpflb.core.model import FrontendKey
    from ebpflb.views.nat import nat_dump_lines, nat_dump_records
    from ebpflb.sync.writer import read_contents
    frontend = (args.ip, args.port, args.proto)
    if None in frontend and frontend != (None, None, None):
        sys.exit("ebpflb nat dump: give IP PORT PROTO together, or none of them")
    only = FrontendKey(*frontend) if args.ip else None
    contents = read_contents(_open_maps(args.pin_dir))
    reached = contents.reached()
    print_each(as_json(nat_dump_records(contents.frontends, reached, only)) if args.json
               else nat_dump_lines(contents.frontends, reached, only))


def cmd_affinity_dump(args) -> None:
    from ebpflb.sync.writer import read_contents
    from ebpflb.views.affinity import affinity_lines, affinity_records
    maps = _open_maps(args.pin_dir)
    contents = read_contents(maps)
    records = affinity_records(maps.affinity.items(), contents.frontends, contents.affinity,
                               contents.affinity_members, time.monotonic_ns())
    print_each(as_json(records) if args.json else affinity_lines(records))


def cmd_conntrack_dump(args) -> None:
    from ebpflb.views.conntrack import flow_lines, flow_records, raw_lines
    entries = _open_maps(args.pin_dir).ct.items()
    now = time.monotonic_ns()
    print_each(as_json(flow_records(entries, now)) if args.json
               else (raw_lines if args.raw else flow_lines)(entries, now))


def cmd_conntrack_stats(args) -> None:
    from ebpflb.views.conntrack import conntrack_stats, stats_lines
    ct = _open_maps(args.pin_dir).ct
    stats = conntrack_stats(ct.items(), ct.max_entries)
    print_each(as_json([stats]) if args.json else stats_lines(stats))


def cmd_drops(args) -> None:
    from ebpflb.views.drops import drop_lines, drop_records, drop_totals
    totals = drop_totals(_open_maps(args.pin_dir).drops.items())
    print_each(as_json(drop_records(totals)) if args.json else drop_lines(totals))


def cmd_conntrack_clean(args) -> None:
    from ebpflb.datapath.conntrack import sweep
    removed = sweep(_open_maps(args.pin_dir), args.ct_timeouts).deleted
    print(f"removed {removed} conntrack entries")


def cmd_conntrack_remove(args) -> None:
    from ebpflb.datapath.conntrack import remove_between
    removed = remove_between(_open_maps(args.pin_dir), args.proto, args.ip1, args.ip2)
    print(f"removed {removed} conntrack entries")


def ct_timeouts(spec: str):
    from ebpflb.datapath.conntrack import Timeouts
    try:
        return Timeouts.parse(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def protocol(text: str) -> int:
    from ebpflb.datapath.structs import proto_number
    try:
        return proto_number(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def addresses(text: str) -> str:
    """HOST:PORT[,HOST:PORT], checked; '' stays ''."""
    from ebpflb.agent.http import split_address
    try:
        for address in filter(None, text.split(",")):
            split_address(address)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def map_size(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 1 << 24:
        raise argparse.ArgumentTypeError(f"map size {text!r}: a whole number of entries, 1 to {1 << 24}")
    return n


def non_negative_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n < 1 << 32:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number, 0 or more")
    return n


def parser() -> argparse.ArgumentParser:
    from ebpflb.datapath.attach import DEFAULT_WORKLOAD_IFACES
    from ebpflb.datapath.structs import C
    from ebpflb.datapath.loader import DEFAULT_HAIRPIN_ADDR
    top = argparse.ArgumentParser(prog="ebpflb", description="eBPF service load balancer for Kubernetes")
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = top.add_subparsers(dest="verb", required=True)

    def with_pin_dir(p):
        p.add_argument("--pin-dir", default=DEFAULT_PIN_DIR, help=f"bpffs directory of the maps (default {DEFAULT_PIN_DIR})")
        return p

    def with_json(p):
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        return p

    agent = with_pin_dir(verbs.add_parser("agent", help="program this node's data plane and keep it in sync"))
    agent.add_argument("--manifests", help="YAML/JSON file or directory of Services and EndpointSlices (instead of the API)")
    agent.add_argument("--kubeconfig", help="kubeconfig of the API server; in a pod with neither flag: in-cluster config")
    agent.add_argument("--min-sync-period", type=float, default=1.0, help="seconds: under a burst of changes, at most one sync per period")
    agent.add_argument("--metrics-addr", type=addresses, default="127.0.0.1:10249",
                       help="HOST:PORT[,HOST:PORT] for /metrics, /healthz, /readyz, /proxyMode ('' to disable); "
                            "a port in use (kube-proxy's) is taken as soon as it is free")
    agent.add_argument("--healthz-addr", type=addresses, default="",
                       help="HOST:PORT for kube-proxy's /healthz and /livez (kube-proxy's is 0.0.0.0:10256; '' off)")
    agent.add_argument("--healthz-timeout", type=float, default=60.0,
                       help="seconds a change may wait for a sync before /healthz and /livez answer 503 (kube-proxy: 60)")
    agent.add_argument("--node-name", default=os.environ.get("NODE_NAME"), help="this node's name (default $NODE_NAME)")
    agent.add_argument("--uplinks", help="IF[,IF]: the node's uplinks for NodePort/externalIP/LB traffic (default: the default route's)")
    agent.add_argument("--xdp", choices=("auto", "native", "off"), default="auto",
                       help="XDP fast path on the uplinks: auto (only where what XDP sends is delivered: not on a "
                            "veth whose peer takes no XDP frames; back to tc if XDP transmit errors grow), "
                            "native (forced), off")
    agent.add_argument("--socket-lb", choices=("on", "off"), default="on",
                       help="Services for this network namespace's own sockets (host processes, hostNetwork pods) "
                            "at connect()/sendto(), by cgroup hooks")
    agent.add_argument("--cgroup-root", help="cgroup v2 directory for those hooks (default: the host's cgroup v2 root "
                                             "from /proc/mounts; one is mounted under /run/ebpflb when none is)")
    agent.add_argument("--localhost-nodeports", action="store_true",
                       help="host sockets also reach NodePorts on 127.0.0.0/8 (kube-proxy's iptables mode does)")
    agent.add_argument("--nodeport-addresses", default="", help="CIDR[,CIDR]: NodePorts only on node addresses inside these")
    agent.add_argument("--workload-ifaces", default=DEFAULT_WORKLOAD_IFACES, help="regex of pod veth host-side names")
    agent.add_argument("--proxy-name", help="serve services labelled service.kubernetes.io/service-proxy-name=NAME")
    agent.add_argument("--hairpin-addr", default=DEFAULT_HAIRPIN_ADDR, help="source address for a pod reaching itself via its service")
    agent.add_argument("--icmp-rate", type=non_negative_int, default=C.ICMP_RATE_DEFAULT, metavar="N",
                       help="ICMP errors the programs send per second, node-wide (port unreachable, frag-needed, "
                            "time exceeded; as the kernel's icmp_msgs_per_sec); over it they are dropped, counted")
    agent.add_argument("--icmp-burst", type=non_negative_int, default=C.ICMP_BURST_DEFAULT, metavar="N",
                       help="and at most this many at once (as icmp_msgs_burst)")
    agent.add_argument("--ct-timeouts", type=ct_timeouts, default="", help="e.g. tcp-established=3600,udp=60 (also tcp-syn-sent, tcp-fin, tcp-rst, icmp, generic)")
    agent.add_argument("--ct-sweep-interval", type=float, default=10.0, help="seconds between conntrack sweeps")
    agent.add_argument("--ct-map-max", type=map_size, default=C.CT_MAX,
                       help=f"conntrack entries (two per flow; least recently used evicted when full; default {C.CT_MAX})")
    agent.add_argument("--frontend-map-max", type=map_size, default=C.NAT_FE_MAX,
                       help=f"service frontends (address, port, protocol) the maps hold (default {C.NAT_FE_MAX})")
    agent.add_argument("--backend-map-max", type=map_size, default=C.NAT_BE_MAX,
                       help=f"backend slots over all service ports (default {C.NAT_BE_MAX})")
    agent.add_argument("--no-endpoints", choices=("reject", "drop"), default="reject",
                       help="what a service without endpoints answers: ICMP port unreachable (like kube-proxy) or nothing")
    agent.add_argument("--bpf-trace", action="store_true",
                       help="the programs log each decision to /sys/kernel/tracing/trace_pipe (slow; for debugging)")
    agent.set_defaults(func=cmd_agent)

    cleanup = with_pin_dir(verbs.add_parser("cleanup", help="detach ebpflb's programs in this network namespace "
                                                           "and from the cgroup, and remove its pins"))
    cleanup.add_argument("--cgroup-root", help="the cgroup the agent's host-socket hooks are on (default: the host's "
                                               "cgroup v2 root)")
    cleanup.set_defaults(func=cmd_cleanup)

    nat = verbs.add_parser("nat", help="NAT maps").add_subparsers(dest="what", required=True)
    nat_dump = with_json(with_pin_dir(nat.add_parser("dump", help="frontends and their backends")))
    nat_dump.add_argument("ip", nargs="?", type=ipv4, help="only this frontend: address,")
    nat_dump.add_argument("port", nargs="?", type=int, help="port")
    nat_dump.add_argument("proto", nargs="?", type=protocol, help="and protocol (number, tcp, udp or sctp)")
    nat_dump.set_defaults(func=cmd_nat_dump)

    with_json(with_pin_dir(verbs.add_parser("drops", help="packets the programs dropped, by reason"))) \
        .set_defaults(func=cmd_drops)

    affinity = verbs.add_parser("affinity", help="session affinity map").add_subparsers(dest="what", required=True)
    with_json(with_pin_dir(affinity.add_parser("dump", help="one line per (service port, client): its backend, "
                                                            "when it last connected"))) \
        .set_defaults(func=cmd_affinity_dump)

    ct = verbs.add_parser("conntrack", help="conntrack map").add_subparsers(dest="what", required=True)
    ct_dump = with_pin_dir(ct.add_parser("dump", help="one line per flow"))
    form = ct_dump.add_mutually_exclusive_group()
    form.add_argument("--raw", action="store_true", help="every entry (both halves of a flow), every field")
    form.add_argument("--json", action="store_true", help="one JSON object per line")
    ct_dump.set_defaults(func=cmd_conntrack_dump)
    with_json(with_pin_dir(ct.add_parser("stats", help="entries, NAT flows, capacity, TCP states"))) \
        .set_defaults(func=cmd_conntrack_stats)
    clean = with_pin_dir(ct.add_parser("clean", help="expire idle flows now, as the agent's sweep does"))
    clean.add_argument("--ct-timeouts", type=ct_timeouts, default="", help="as for the agent")
    clean.set_defaults(func=cmd_conntrack_clean)
    remove = with_pin_dir(ct.add_parser("remove", help="forget every flow between two addresses"))
    remove.add_argument("proto", type=protocol, help="number, tcp, udp, sctp or icmp")
    remove.add_argument("ip1", type=ipv4)
    remove.add_argument("ip2", type=ipv4)
    remove.set_defaults(func=cmd_conntrack_remove)
    return top


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    args.func(args)


if __name__ == "__main__":
    main()
