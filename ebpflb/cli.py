"""The `ebpflb` command: thin verbs over the agent, the maps and the views."""
import argparse
import logging
import os
import shutil
import sys
import time

from .paths import DEFAULT_PIN_DIR


def _open_maps(pin_dir: str):
    from .maps import LayoutMismatch, Maps, MapsNotFound
    try:
        return Maps.open(pin_dir)
    except (MapsNotFound, LayoutMismatch) as err:
        sys.exit(f"ebpflb: {err}")


def cmd_agent(args) -> None:
    from .agent import AgentConfig, run_agent
    from .conntrack import Timeouts
    if not args.node_name:
        sys.exit("ebpflb agent: --node-name (or $NODE_NAME) is required")
    run_agent(AgentConfig(manifests=args.manifests, node_name=args.node_name, pin_dir=args.pin_dir,
                          workload_ifaces=args.workload_ifaces, proxy_name=args.proxy_name,
                          hairpin_addr=args.hairpin_addr, ct_timeouts=Timeouts.parse(args.ct_timeouts),
                          sweep_interval=args.ct_sweep_interval))


def cmd_cleanup(args) -> None:
    from pyroute2 import IPRoute
    from .attach import detach_all
    with IPRoute() as ipr:
        touched = detach_all(ipr)
    print(f"detached from {len(touched)} interfaces" + (f": {', '.join(touched)}" if touched else ""))
    if os.path.isdir(args.pin_dir):
        shutil.rmtree(args.pin_dir)
        print(f"removed pins in {args.pin_dir}")


def cmd_nat_dump(args) -> None:
    from .views.nat import nat_dump_lines
    from .writer import read_contents
    contents = read_contents(_open_maps(args.pin_dir))
    for line in nat_dump_lines(contents.frontends, contents.backends):
        print(line)


def cmd_conntrack_dump(args) -> None:
    from .structs import ffi
    from .views.conntrack import flow_line
    entries = _open_maps(args.pin_dir).ct.items()
    by_key = {bytes(ffi.buffer(k)): v for k, v in entries}
    now = time.monotonic_ns()
    for key, value in entries:
        line = flow_line(key, value, by_key.get(bytes(ffi.buffer(ffi.addressof(value, "twin")))), now)
        if line:
            print(line)


def parser() -> argparse.ArgumentParser:
    from .attach import DEFAULT_WORKLOAD_IFACES
    from .loader import DEFAULT_HAIRPIN_ADDR
    top = argparse.ArgumentParser(prog="ebpflb", description="eBPF service load balancer for Kubernetes")
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = top.add_subparsers(dest="verb", required=True)

    def with_pin_dir(p):
        p.add_argument("--pin-dir", default=DEFAULT_PIN_DIR, help=f"bpffs directory of the maps (default {DEFAULT_PIN_DIR})")
        return p

    agent = with_pin_dir(verbs.add_parser("agent", help="program this node's data plane and keep it in sync"))
    agent.add_argument("--manifests", required=True, help="YAML/JSON file or directory of Services and EndpointSlices")
    agent.add_argument("--node-name", default=os.environ.get("NODE_NAME"), help="this node's name (default $NODE_NAME)")
    agent.add_argument("--workload-ifaces", default=DEFAULT_WORKLOAD_IFACES, help="regex of pod veth host-side names")
    agent.add_argument("--proxy-name", help="serve services labelled service.kubernetes.io/service-proxy-name=NAME")
    agent.add_argument("--hairpin-addr", default=DEFAULT_HAIRPIN_ADDR, help="source address for a pod reaching itself via its service")
    agent.add_argument("--ct-timeouts", default="", help="e.g. tcp-established=3600,udp=60 (also tcp-syn-sent, tcp-fin, tcp-rst, icmp, generic)")
    agent.add_argument("--ct-sweep-interval", type=float, default=10.0, help="seconds between conntrack sweeps")
    agent.set_defaults(func=cmd_agent)

    cleanup = with_pin_dir(verbs.add_parser("cleanup", help="detach ebpflb's programs in this network namespace and remove its pins"))
    cleanup.set_defaults(func=cmd_cleanup)

    nat = verbs.add_parser("nat", help="NAT maps").add_subparsers(dest="what", required=True)
    with_pin_dir(nat.add_parser("dump", help="frontends and their backends")).set_defaults(func=cmd_nat_dump)
    ct = verbs.add_parser("conntrack", help="conntrack map").add_subparsers(dest="what", required=True)
    with_pin_dir(ct.add_parser("dump", help="one line per flow")).set_defaults(func=cmd_conntrack_dump)
    return top


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    args.func(args)


if __name__ == "__main__":
    main()
