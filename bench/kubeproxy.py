"""kube-proxy's iptables mode, written the way its proxier writes the nat table (pkg/proxy/iptables,
v1.28+): PREROUTING/OUTPUT -> KUBE-SERVICES, one rule per service port jumping to KUBE-SVC-<hash>,
which masquerades off-cluster sources and spreads over KUBE-SEP-<hash> chains with
`-m statistic --mode random --probability 1/(n-i)`; each KUBE-SEP marks hairpin traffic and DNATs.
Chain names are kube-proxy's: base32(sha256(service port name + protocol [+ endpoint]))[:16].
The nodeports rule closes KUBE-SERVICES, as kube-proxy keeps it. Services and endpoints are
bench.objects.cluster's, so ebpflb gets the very same ones from manifests.
"""
import base64
import hashlib

CLUSTER_CIDR = "10.200.0.0/16"     # the lab's pods: no masquerade for them


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(name: str) -> str:
    return "KUBE-SVC-" + _hash(name + "tcp")


def sep_chain(name: str, endpoint: str) -> str:
    return "KUBE-SEP-" + _hash(name + "tcp" + endpoint)


def ruleset(services: list[dict], slices: list[dict]) -> str:
    """iptables-restore input for the nat table, from Services and their EndpointSlices (one TCP
    port each, as bench.objects makes them)."""
    slices_by_svc = {s["metadata"]["labels"]["kubernetes.io/service-name"]: s for s in slices}
    chains = [":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
              ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]",
              ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
    ]
    svc_rules, chain_rules = [], []
    for svc in services:
        meta, spec = svc["metadata"], svc["spec"]
        port = spec["ports"][0]
        name = f'{meta["namespace"]}/{meta["name"]}:{port["name"]}'
        vip, vport = spec["clusterIP"], port["port"]
        eps_slice = slices_by_svc[meta["name"]]
        target = eps_slice["ports"][0]["port"]
        endpoints = [f"{e['addresses'][0]}:{target}" for e in eps_slice["endpoints"]
                     if e["conditions"].get("ready", True)]
        svc_chain_name = svc_chain(name)
        chains.append(f":{svc_chain_name} - [0:0]")
        match = f'-m comment --comment "{name} cluster IP" -m tcp -p tcp -d {vip}/32 --dport {vport}'
        svc_rules.append(f"-A KUBE-SERVICES {match} -j {svc_chain_name}")
        chain_rules.append(f"-A {svc_chain_name} {match} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ")
        n = len(endpoints)
        for i, endpoint in enumerate(endpoints):
            sep = sep_chain(name, endpoint)
            chains.append(f":{sep} - [0:0]")
            comment = f'-m comment --comment "{name} -> {endpoint}"'
            if i < n - 1:
                chain_rules.append(f"-A {svc_chain_name} {comment} -m statistic --mode random "
                                   f"--probability {1 / (n - i):0.10f} -j {sep}")
            else:
                chain_rules.append(f"-A {svc_chain_name} {comment} -j {sep}")
            ip = endpoint.split(":")[0]
            chain_rules.append(f"-A {sep} -m comment --comment {name} -s {ip}/32 -j KUBE-MARK-MASQ")
            chain_rules.append(f"-A {sep} -m comment --comment {name} -m tcp -p tcp "
                               f"-j DNAT --to-destination {endpoint}")
    svc_rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this '
                     'must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    return "\n".join(["*nat", *chains, *rules, *svc_rules, *chain_rules, "COMMIT", ""])
