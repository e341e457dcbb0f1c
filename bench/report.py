"""The table, the plots and the rerun commands, from bench/results.json.

    .venv/bin/python -m bench.report           # table (markdown) + plots of what results.json holds
"""
import sys
from dataclasses import dataclass

from bench.common import PLOTS, PY, RESULTS, ensure_matplotlib, load_results

COMMANDS = {
    "packets": f"{PY} -m bench.packets",
    "e2e": f"{PY} -m bench.dataplane --only e2e",
    "iptables": f"{PY} -m bench.dataplane --only iptables",
    "controlplane": f"{PY} -m bench.controlplane",
    "xdp": f"{PY} -m bench.xdp",
    "upkeep": f"{PY} -m bench.upkeep",
    "synflood": f"{PY} -m bench.synflood",
}
SCALE_NAMES = {"1": "1 svc", "1000": "1k svc", "10000": "10k svc", "100000": "100k svc"}


@dataclass
class Row:
    section: str
    figure: str
    value: float
    unit: str
    reference: float | None = None       # same unit
    ref_name: str = ""
    goal: str = ""                       # on the ratio value/reference (or on the value if no reference)
    check: object = None                 # ratio (or value) -> bool
    noise: str = ""

    @property
    def ratio(self):
        return self.value / self.reference if self.reference else None

    @property
    def met(self) -> str:
        if self.check is None:
            return "-"
        subject = self.ratio if self.reference else self.value
        return "met" if self.check(subject) else "NOT met"


def fmt(v: float, unit: str) -> str:
    if unit in ("ns", "us", "MB", "conn/s") or abs(v) >= 100:
        return f"{v:,.0f} {unit}".strip()
    return f"{v:.2f} {unit}".strip()


def mm(d: dict, unit: str) -> str:
    """min–max of a spread, numbers formatted as the unit's values are (no unit)."""
    return f"{fmt(d['min'], unit).removesuffix(unit).strip()}–{fmt(d['max'], unit).removesuffix(unit).strip()}"


def packet_rows(p: dict) -> list[Row]:
    rows = []
    goals = {"established": ("≤ 1.5×", lambda r: r <= 1.5), "new_flow": ("≤ 3×", lambda r: r <= 3)}
    names = {"established": "established TCP packet", "new_flow": "new flow SYN (reopen path, every run)",
             "reply": "reply, reverse NAT (to_workload)", "pass_from": "pass-through, from_workload",
             "pass_to": "pass-through, to_workload"}
    for scale, cases in p["scales"].items():
        base = cases["baseline"]
        for case, name in names.items():
            c = cases[case]
            goal, check = goals.get(case, ("", None))
            rows.append(Row("packets", f"{name}, {SCALE_NAMES.get(scale, scale)}", c["median"], "ns",
                            base["median"], "parse-only baseline", goal, check,
                            f"{mm(c, 'ns')}; baseline {mm(base, 'ns')}"))
    scales = list(p["scales"])
    lo, hi = scales[0], scales[-1]
    cases = p["scales"][lo]
    designs = {"": "LRU (today's)", "_nocommon": "LRU, BPF_F_NO_COMMON_LRU", "_hash": "hash, preallocated",
               "_hash_noprealloc": "hash, BPF_F_NO_PREALLOC"}
    designs = {d: name for d, name in designs.items() if f"writes_floor{d}" in cases}
    base = cases["baseline"]
    for d, design in designs.items():
        for kind, what in (("lookup", "one conntrack lookup"), ("writes", "the two conntrack writes of a new flow")):
            f = cases[f"{kind}_floor{d}"]
            rows.append(Row("packets", f"floor: parse + {what}, {design}", f["median"], "ns", base["median"],
                            "parse-only baseline", "", None, f"{mm(f, 'ns')}; baseline {mm(base, 'ns')}"))
    if designs:   # issue 21's goals: against the floors, side by side in the same run
        best = min(designs, key=lambda d: cases[f"writes_floor{d}"]["median"])
        new, floor = cases["new_flow"], cases[f"writes_floor{best}"]
        rows.append(Row("packets", f"new flow SYN (reopen path) vs the best writes floor ({designs[best]}), "
                        f"{SCALE_NAMES.get(lo, lo)}", new["median"], "ns", floor["median"],
                        f"writes floor, {designs[best]}", "≤ 1.5×", lambda r: r <= 1.5,
                        f"{mm(new, 'ns')}; floor {mm(floor, 'ns')}; against today's LRU writes floor "
                        f"{new['median'] / cases['writes_floor']['median']:.2f}×"))
        est, floor = cases["established"], cases["lookup_floor"]
        rows.append(Row("packets", f"established TCP packet vs its lookup floor (LRU), {SCALE_NAMES.get(lo, lo)}",
                        est["median"], "ns", floor["median"], "lookup floor, LRU", "≤ 1.2×", lambda r: r <= 1.2,
                        f"{mm(est, 'ns')}; floor {mm(floor, 'ns')}; fastest runs {est['min'] / floor['min']:.2f}×"))
    for case, name in names.items():
        a, b = p["scales"][hi][case], p["scales"][lo][case]
        rows.append(Row("packets", f"{name}: {SCALE_NAMES.get(hi, hi)} vs {SCALE_NAMES.get(lo, lo)}",
                        a["median"], "ns", b["median"], f"same at {SCALE_NAMES.get(lo, lo)}", "≤ 1.10×",
                        lambda r: r <= 1.10, f"{mm(a, 'ns')}; {mm(b, 'ns')}; fastest runs {a['min'] / b['min']:.2f}×"))
    s = p.get("single_shot")
    if s:
        rows.append(Row("packets", "new flow, genuine first SYN, one run per sample (cross-check)",
                        s["new_flow"]["median"], "ns", s["baseline"]["median"], "baseline, one run per sample",
                        "", None, f"{mm(s['new_flow'], 'ns')}; baseline {mm(s['baseline'], 'ns')} "
                        f"(medians of {s['samples_per_run']} samples, {s['new_flow']['runs']} runs)"))
        shot_floors = {d: name for d, name in designs.items() if f"writes_floor{d}" in s}
        if shot_floors:
            best = min(shot_floors, key=lambda d: s[f"writes_floor{d}"]["median"])
            floor = s[f"writes_floor{best}"]
            others = ", ".join(f"{name} {s[f'writes_floor{d}']['median']:.0f}" for d, name in shot_floors.items())
            rows.append(Row("packets", f"new flow, genuine first SYN vs the best writes floor on fresh keys "
                            f"({shot_floors[best]}), one run per sample", s["new_flow"]["median"], "ns",
                            floor["median"], f"writes floor, {shot_floors[best]}", "≤ 1.5×", lambda r: r <= 1.5,
                            f"{mm(s['new_flow'], 'ns')}; floors on fresh keys (ns): {others}; baseline "
                            f"{s['baseline']['median']:.0f}"))
    return rows


def e2e_rows(e: dict) -> list[Row]:
    v, d = e["vip"], e["direct"]
    return [
        Row("e2e", "TCP throughput pod→VIP (iperf3)", v["gbps"]["median"], "Gbit/s", d["gbps"]["median"],
            "pod→pod direct", "≥ 0.95×", lambda r: r >= 0.95,
            f"{mm(v['gbps'], '')}; direct {mm(d['gbps'], '')} ({v['gbps']['runs']} runs)"),
        Row("e2e", "request latency p50, new connection each", v["request_us"]["p50"], "us",
            d["request_us"]["p50"], "pod→pod direct", "≤ 1.05×", lambda r: r <= 1.05,
            f"round p50s {mm(v['request_p50_rounds'], 'us')}; direct {mm(d['request_p50_rounds'], 'us')}"),
        Row("e2e", "request latency p99, new connection each", v["request_us"]["p99"], "us",
            d["request_us"]["p99"], "pod→pod direct", "", None,
            f"{v['request_us']['samples']} requests per path"),
        Row("e2e", "TCP connect latency p50", v["connect_us"]["p50"], "us", d["connect_us"]["p50"],
            "pod→pod direct", "", None,
            f"round p50s {mm(v['connect_p50_rounds'], 'us')}; direct {mm(d['connect_p50_rounds'], 'us')}"),
        Row("e2e", "new connections per second (2 clients)", v["conn_per_s"]["median"], "conn/s",
            d["conn_per_s"]["median"], "pod→pod direct", "≥ 0.90×", lambda r: r >= 0.90,
            f"{mm(v['conn_per_s'], 'conn/s')}; direct {mm(d['conn_per_s'], 'conn/s')}"),
    ] + ([
        Row("e2e", "TCP connect latency p50 from the node's own namespace, host→VIP (connect-time LB)",
            v["host_connect_us"]["p50"], "us", d["host_connect_us"]["p50"], "host→pod direct", "", None,
            f"round p50s {mm(v['host_connect_p50_rounds'], 'us')}; direct {mm(d['host_connect_p50_rounds'], 'us')}"),
    ] if "host_connect_us" in v else [])


def iptables_rows(t: dict) -> list[Row]:
    rows = []
    for scale in ("1000", "10000"):
        if scale not in t or "ebpflb" not in t[scale]:
            continue
        ipt, elb = t[scale]["iptables"], t[scale]["ebpflb"]
        name = SCALE_NAMES[scale]
        goal, check = ("≤ 0.5×", lambda r: r <= 0.5) if scale == "10000" else ("", None)
        rows += [
            Row("iptables", f"connect latency p50 to the last service, {name} x 10", elb["connect_us"]["p50"], "us",
                ipt["connect_us"]["p50"], "kube-proxy iptables", goal, check,
                f"round p50s {mm(elb['connect_p50_rounds'], 'us')}; iptables {mm(ipt['connect_p50_rounds'], 'us')}"),
            Row("iptables", f"connect latency p99, {name} x 10", elb["connect_us"]["p99"], "us",
                ipt["connect_us"]["p99"], "kube-proxy iptables", "", None,
                f"{elb['connect_us']['samples']} connections each"),
            Row("iptables", f"new connections per second, {name} x 10", elb["conn_per_s"]["median"], "conn/s",
                ipt["conn_per_s"]["median"], "kube-proxy iptables", "", None,
                f"{mm(elb['conn_per_s'], 'conn/s')}; iptables {mm(ipt['conn_per_s'], 'conn/s')}"),
            Row("iptables", f"pod→pod connect p50 (control, no service), {name}", elb["direct_connect_p50_us"], "us",
                ipt["direct_connect_p50_us"], "under iptables", "", None, "every new connection walks KUBE-SERVICES"),
            Row("iptables", f"iptables-restore of the nat table, {name} x 10 ({ipt['rules']:,} rules)",
                ipt["restore_s"], "s", None, "", "", None, f"one run; deleting the table: {ipt['delete_s']:.2f} s"),
        ]
    return rows


def controlplane_rows(c: dict, t: dict | None) -> list[Row]:
    le3 = ("≤ 3 s", lambda v: v <= 3)
    rows = [
        Row("controlplane", "cold start from the API, 10k x 10", c["cold_start_api_s"]["median"], "s", None, "",
            *le3, mm(c["cold_start_api_s"], "")),
        Row("controlplane", "cold start from JSON manifests, 10k x 10", c["cold_start_manifests_json_s"]["median"],
            "s", None, "", *le3, mm(c["cold_start_manifests_json_s"], "")),
        Row("controlplane", "cold start from YAML manifests, 10k x 10", c["cold_start_manifests_yaml_s"]["median"],
            "s", None, "", *le3, mm(c["cold_start_manifests_yaml_s"], "")),
    ]
    if t and "10000" in t:
        restore = t["10000"]["iptables"]["restore_s"]
        rows.append(Row("controlplane", "cold start from the API vs iptables-restore, 10k x 10",
                        c["cold_start_api_s"]["median"], "s", restore, "iptables-restore (same ruleset)",
                        "≤ 0.10× (10× faster)", lambda r: r <= 0.10,
                        f"{mm(c['cold_start_api_s'], '')}; iptables-restore one run"))
    if "process_start_api_s" in c:   # results written before this figure existed have none
        rows.append(Row("controlplane", "process start → programmed, API, 10k x 10 (bcc compile included)",
                        c["process_start_api_s"]["median"], "s", None, "", "", None,
                        f"{mm(c['process_start_api_s'], '')}; JSON manifests "
                        f"{c['process_start_manifests_json_s']['median']:.2f} s, YAML "
                        f"{c['process_start_manifests_yaml_s']['median']:.2f} s"))
    ch = c["endpointslice_change_ms"]
    rows += [
        Row("controlplane", "one EndpointSlice change → maps, p50", ch["p50"], "ms", None, "", "", None,
            f"{ch['changes']} changes, {ch['min']:.2f}–{ch['max']:.2f}"),
        Row("controlplane", "one EndpointSlice change → maps, p99", ch["p99"], "ms", None, "", "≤ 20 ms",
            lambda v: v <= 20, f"{ch['changes']} changes"),
        Row("controlplane", "agent RSS at 10k services", c["agent_rss_mb"], "MB", None, "", "≤ 150 MB",
            lambda v: v <= 150, "after the last cold start"),
    ]
    return rows


def xdp_rows(x: dict) -> list[Row]:
    rows = []
    f = x.get("frames")
    if f:
        t, d = f["tc"], f["xdp"]
        rows.append(Row("xdp", "NodePort to a remote backend (DNAT+SNAT+forward), 106 B UDP frames arriving as XDP "
                        "frames (a NIC's receive ring) at the generator's full rate, forwarded per second, XDP vs tc",
                        d["median"], "pkt/s",
                        t["median"], "tc from_uplink", "≥ 2×", lambda r: r >= 2,
                        f"{mm(d, 'pkt/s')}; tc {mm(t, 'pkt/s')} ({f['frames_per_round']:,} frames x {d['runs']} rounds; "
                        f"lost to the full receive ring: XDP ≤ {d['lost']['max']:.1%}, tc ≤ {t['lost']['max']:.1%}; "
                        f"XDP_TX: every forwarded frame in XDP mode, none in tc mode)"))
    p = x.get("packets")
    if p:
        t, d = p["tc"], p["xdp"]
        rows.append(Row("xdp", "established NodePort packet to a remote backend (DNAT+SNAT+forward), "
                        "XDP vs tc, BPF_PROG_TEST_RUN (program cost only, no skb)", 1e3 / d["median"], "Mpkt/s",
                        1e3 / t["median"], "tc from_uplink", "", None,
                        f"per packet: XDP {d['median']:.0f} ns ({mm(d, 'ns')}), tc {t['median']:.0f} ns "
                        f"({mm(t, 'ns')}); program cost only, no skb/stack ({p['repeat']:,} repeats, {d['runs']} runs)"))
    lab = x.get("lab")
    if lab:
        n, o = lab["native"], lab["off"]
        rows += [
            Row("xdp", "lab NodePort X→node-0→B, UDP 64 B datagrams/s received, XDP native vs off (veth: skbs copied "
                "into XDP buffers)", n["udp_pps"]["median"], "pkt/s", o["udp_pps"]["median"], "--xdp off", "", None,
                f"{mm(n['udp_pps'], 'pkt/s')}; off {mm(o['udp_pps'], 'pkt/s')} ({n['udp_pps']['runs']} rounds, "
                f"loss ≤ {max(n['udp_loss']['max'], o['udp_loss']['max']):.1%})"),
            Row("xdp", "lab NodePort X→node-0→B, TCP throughput (iperf3), XDP native vs off (veth, not a NIC)",
                n["gbps"]["median"], "Gbit/s", o["gbps"]["median"], "--xdp off", "", None,
                f"{mm(n['gbps'], '')}; off {mm(o['gbps'], '')}; node-0 XDP_TX per round: "
                f"{min(n['xdp_tx']):,}–{max(n['xdp_tx']):,} (off: {max(o['xdp_tx'])})"),
        ]
    return rows


def upkeep_rows(u: dict) -> list[Row]:
    rows = []
    if "sweep" in u:
        w = u["sweep"]
        k, py = w["kernel"], w["python"]
        n = f"{w['entries'] // 1000}k"
        rows += [
            Row("upkeep", f"conntrack sweep of a full map ({n} entries, all expired), in the kernel: CPU",
                k["cpu_ms"]["median"], "ms", py["cpu_ms"]["median"], "judged in Python", "", None, mm(k["cpu_ms"], "ms")),
            Row("upkeep", f"conntrack sweep of {n} entries: agent RSS growth", k["rss_growth_mb"]["median"], "MB",
                None, "", "≤ 20 MB", lambda v: v <= 20,
                f"{mm(k['rss_growth_mb'], 'MB')}; judged in Python {py['rss_growth_mb']['median']:.0f} MB"),
            Row("upkeep", f"conntrack sweep of {n} entries: longest wait of another thread (a sync)",
                k["gil_wait_max_ms"]["median"], "ms", None, "", "≤ 10 ms", lambda v: v <= 10,
                f"{mm(k['gil_wait_max_ms'], 'ms')}; judged in Python {py['gil_wait_max_ms']['median']:.0f} ms"),
        ]
    if "scrape" in u:
        s = u["scrape"]
        rows.append(Row("upkeep", f"metrics scrape at {s['services'] // 1000}k services: agent CPU",
                        s["scrape_ms"]["median"], "ms", s["before_ms"]["median"], "the scrape before issue 21",
                        "≤ 50 ms", None, f"{mm(s['scrape_ms'], 'ms')}"))
        rows[-1].check = lambda r, v=s["scrape_ms"]["median"]: v <= 50
    return rows


def synflood_lab_rows(lab: dict) -> list[Row]:
    flood, alone = lab["flood"], lab["alone"]
    return [
        Row("synflood", f"SYN flood in the lab through a SNAT NodePort: new flows the node made, of the SYNs sent "
            f"(one generator process, {lab['seconds']} s)", flood["new_flows"], "", flood["sent"], "SYNs sent",
            "", None, f"generator {flood['sent_per_s']:,.0f} SYNs/s; conntrack {lab['ct_entries_after']:,} of "
            f"{lab['ct_entries_max']:,} entries after; node-0's drops: "
            + ", ".join(f"{k} {v:,}" for k, v in lab["drops"].items())),
        Row("synflood", f"SYN flood in the lab: established iperf3 connections whole throughout (sampled every "
            f"0.2 s, {flood['pairs_sampled']} samples)", flood["pairs_whole_min"], "", flood["pairs_expected"],
            "connections", "all (1.00×)", lambda r: r == 1, f"iperf3 retransmits during it: {flood['retransmits']:,}"),
        Row("synflood", f"SYN flood in the lab: established throughput during it vs alone ({lab['streams']} "
            f"iperf3 streams)", flood["gbps"], "Gbit/s", alone["gbps"], "alone", "≥ 0.90×", lambda r: r >= 0.90,
            "generator and node share 2 CPUs"),
        Row("synflood", "SYN flood in the lab: a new connection through the NodePort after it gets through "
            "within (s)", lab["new_connection_after_s"] if lab["new_connection_after_s"] is not None else float("inf"),
            "s", None, "", "", None, "inf: refused for the whole wait (the flood's flows hold every SNAT port)"),
    ]


def synflood_rows(f: dict) -> list[Row]:
    lab = synflood_lab_rows(f["lab"]) if f.get("lab") else []
    if "flood_syns" not in f:
        return lab
    maps = f["flood_syns"] / f["ct_entries_max"]
    return lab + [
        Row("synflood", f"SYN flood ({maps:.0f} maps' worth of new flows, random sources): new flows admitted",
            f["admitted"], "", f["flood_syns"], "SYNs sent", "all (1.00×)", lambda r: r == 1,
            f"{f['flood_syns_per_s_one_cpu'] / 1e6:.2f} M SYNs/s on one CPU in the programs (mean "
            f"{f['flood_syn_ns_mean']:.0f} ns a single run, median {f['flood_syn_ns_median']:.0f})"),
        Row("synflood", f"SYN flood: established flows whole after it ({f['established']}, a packet each way a "
            f"round)", f["established_whole_after"], "", f["established"], "established before", "all (1.00×)",
            lambda r: r == 1, f"{f['established_untranslated']} established packets untranslated"),
        Row("synflood", "SYN flood: an established packet's cost during it vs before (single runs, same map fill)",
            f["established_ns_during"], "ns", f["established_ns_before"], "before the flood", "≤ 1.10×",
            lambda r: r <= 1.10, "single runs, cache-cold after each syscall: the flood's entries push the "
            "established ones out of the CPU's caches"),
    ]


def rows_of(results: dict, sections=None) -> list[Row]:
    rows = []
    want = lambda s: sections is None or s in sections
    if "packets" in results and want("packets"):
        rows += packet_rows(results["packets"])
    if "e2e" in results and want("e2e"):
        rows += e2e_rows(results["e2e"])
    if "iptables" in results and want("iptables"):
        rows += iptables_rows(results["iptables"])
    if "controlplane" in results and want("controlplane"):
        rows += controlplane_rows(results["controlplane"], results.get("iptables"))
    if "xdp" in results and want("xdp"):
        rows += xdp_rows(results["xdp"])
    if "upkeep" in results and want("upkeep"):
        rows += upkeep_rows(results["upkeep"])
    if "synflood" in results and want("synflood"):
        rows += synflood_rows(results["synflood"])
    return rows


def markdown(rows: list[Row]) -> str:
    out = ["| figure | value | reference | ratio | goal | met | min–max (noise) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{fmt(r.reference, r.unit)} ({r.ref_name})" if r.reference else "-"
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "-"
        out.append(f"| {r.figure} | {fmt(r.value, r.unit)} | {ref} | {ratio} | {r.goal or '-'} | {r.met} | {r.noise} |")
    return "\n".join(out)


def plots(results: dict) -> list[str]:
    plt = ensure_matplotlib()
    PLOTS.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        path = PLOTS / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path.relative_to(RESULTS.parent.parent)))

    def bars(ax, labels, series: dict, unit: str, title: str):
        width = 0.8 / max(1, len(series))
        for k, (name, points) in enumerate(series.items()):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
            med = [p[0] for p in points]
            err = [[p[0] - p[1] for p in points], [p[2] - p[0] for p in points]]
            ax.bar(xs, med, width, yerr=err, capsize=3, label=name)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)

    if "packets" in results:
        p = results["packets"]
        cases = ["baseline", "established", "new_flow", "reply", "pass_from", "pass_to"]
        fig, ax = plt.subplots(figsize=(9, 4.5))
        series = {f"{SCALE_NAMES.get(s, s)}": [(p["scales"][s][c]["median"], p["scales"][s][c]["min"],
                                                p["scales"][s][c]["max"]) for c in cases] for s in p["scales"]}
        bars(ax, ["parse-only\nbaseline", "established", "new flow\n(SYN)", "reply\n(rev NAT)",
                  "pass-through\nfrom_workload", "pass-through\nto_workload"], series, "ns per packet",
             f"BPF_PROG_TEST_RUN, {p['repeat']:,} repeats, median of {p['runs']} runs (bars: min–max)")
        save(fig, "packets.png")

    if "e2e" in results:
        e = results["e2e"]
        fig, axes = plt.subplots(1, 4, figsize=(12, 3.8))
        metrics = [("gbps", "Gbit/s", "iperf3 throughput"), ("request_us", "us", "request latency (new conn)"),
                   ("connect_us", "us", "connect latency"), ("conn_per_s", "conn/s", "new connections/s")]
        for ax, (key, unit, title) in zip(axes, metrics):
            if key.endswith("_us"):
                series = {path: [(e[path][key]["p50"], e[path][key.replace("_us", "_p50_rounds")]["min"],
                                  e[path][key.replace("_us", "_p50_rounds")]["max"]), (e[path][key]["p99"],) * 3]
                          for path in ("direct", "vip")}
                bars(ax, ["p50", "p99"], series, unit, title)
            else:
                series = {path: [(e[path][key]["median"], e[path][key]["min"], e[path][key]["max"])]
                          for path in ("direct", "vip")}
                bars(ax, [""], series, unit, title)
        fig.suptitle("pod C → pod B direct vs pod C → VIP (one endpoint: B)", fontsize=10)
        save(fig, "e2e.png")

    t = results.get("iptables")
    if t and any(s in t and "ebpflb" in t[s] for s in ("1000", "10000")):
        scales = [s for s in ("1000", "10000") if s in t and "ebpflb" in t[s]]
        fig, axes = plt.subplots(1, 3, figsize=(12, 4))
        for ax, pct in zip(axes[:2], ("p50", "p99")):
            series = {who: [(t[s][who]["connect_us"][pct], t[s][who]["connect_p50_rounds"]["min"],
                             t[s][who]["connect_p50_rounds"]["max"]) if pct == "p50" else (t[s][who]["connect_us"][pct],) * 3
                            for s in scales] for who in ("iptables", "ebpflb")}
            bars(ax, [SCALE_NAMES[s] + " x 10" for s in scales], series, "us",
                 f"connect latency {pct}, last service" + (" (bars: rounds' p50s)" if pct == "p50" else ""))
        series = {who: [(t[s][who]["conn_per_s"]["median"], t[s][who]["conn_per_s"]["min"],
                         t[s][who]["conn_per_s"]["max"]) for s in scales] for who in ("iptables", "ebpflb")}
        bars(axes[2], [SCALE_NAMES[s] + " x 10" for s in scales], series, "conn/s", "new connections/s")
        fig.suptitle("kube-proxy iptables mode vs ebpflb, same services, same lab", fontsize=10)
        save(fig, "iptables.png")

    c = results.get("controlplane")
    if c:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = ["ebpflb\nfrom API", "ebpflb\nJSON manifests", "ebpflb\nYAML manifests"]
        vals = [c["cold_start_api_s"], c["cold_start_manifests_json_s"], c["cold_start_manifests_yaml_s"]]
        points = [(v["median"], v["min"], v["max"]) for v in vals]
        if t and "10000" in t:
            labels.append("iptables-restore")
            r = t["10000"]["iptables"]["restore_s"]
            points.append((r, r, r))
        bars(ax, labels, {"10k services x 10 endpoints": points}, "seconds", "cold start to fully programmed")
        save(fig, "controlplane.png")

    x = results.get("xdp")
    if x:
        fig, axes = plt.subplots(1, 4, figsize=(16, 4))
        if "frames" in x:
            f = x["frames"]
            bars(axes[0], [""], {name: [(f[k]["median"] * 1e-6, f[k]["min"] * 1e-6, f[k]["max"] * 1e-6)]
                                 for k, name in (("tc", "tc from_uplink"), ("xdp", "XDP xdp_uplink"))},
                 "M frames/s", "frames from the wire, forwarded")
        if "packets" in x:
            p = x["packets"]
            bars(axes[1], [""], {name: [(p[k]["median"], p[k]["min"], p[k]["max"])]
                                 for k, name in (("tc", "tc from_uplink"), ("xdp", "XDP xdp_uplink"))},
                 "ns per packet", f"BPF_PROG_TEST_RUN, {p['repeat']:,} repeats")
        if "lab" in x:
            lab = x["lab"]
            for ax, key, unit, title, scale in ((axes[2], "udp_pps", "k datagrams/s", "lab: UDP 64 B received", 1e-3),
                                                (axes[3], "gbps", "Gbit/s", "lab: TCP iperf3", 1)):
                bars(ax, [""], {f"--xdp {m}": [(lab[m][key]["median"] * scale, lab[m][key]["min"] * scale,
                                                lab[m][key]["max"] * scale)] for m in ("native", "off")},
                     unit, title)
        fig.suptitle("NodePort to a remote backend (DNAT+SNAT+forward): XDP vs tc; the uplinks are veths", fontsize=10)
        save(fig, "xdp.png")
    return written


def print_table(sections=None, with_plots: bool = True) -> None:
    results = load_results()
    rows = rows_of(results, sections)
    print()
    print(markdown(rows))
    met = [r for r in rows if r.check is not None]
    print(f"\ngoals met: {sum(r.met == 'met' for r in met)} of {len(met)}")
    print("\nrerun one figure:")
    shown = sections or ("packets", "e2e", "iptables", "controlplane", "xdp", "upkeep", "synflood")
    for s in shown:
        if s in COMMANDS and s in results:
            print(f"  {s:13s} {COMMANDS[s]}")
    print(f"  {'everything':13s} make bench   (table and plots again: {PY} -m bench.report)")
    if with_plots:
        for path in plots(results):
            print(f"plot: {path}")
    print(f"results: {RESULTS.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    print_table()
    sys.exit(0)
