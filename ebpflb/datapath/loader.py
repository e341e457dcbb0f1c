"""Compile and load the BPF programs with bcc, their maps pinned under a pin dir.

bcc compiles in a short-lived child process that hands the program fds back over a unix socket
and exits: bcc's libraries (LLVM, clang) and what a compile leaves on the heap cost the agent
≈ 150 MB of RSS for as long as it runs when loaded in-process, and nothing needs them after load.
"""
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ebpflb.datapath import upgrade
from ebpflb.datapath.btf import SkbCsumFacts, SockReaperFacts, skb_csum_facts, sock_reaper_facts
from ebpflb.datapath.maps import LayoutMismatch, Maps, read_layout_version
from ebpflb.paths import BPF_DIR
from ebpflb.datapath.structs import C, LAYOUT_VERSION, ffi, ip_be, to_bytes

log = logging.getLogger(__name__)

BPFFS = "/sys/fs/bpf"
# Compile units (entry files compiled together, one bcc object each, all sharing the pinned maps)
# and the programs each holds: bcc's program type, or (type, the attach type the kernel checks at
# load). The sweep's program and the host-socket ones ride with workload.c: alone, a compile's
# fixed cost added 1.4 s to start-up; together, nothing measurable.
PROGRAMS = {
    ("workload.c", "ct_sweep.c", "sock.c", "sock_reaper.c"): {
        "from_workload": "SCHED_CLS", "to_workload": "SCHED_CLS",
        "ct_delete_unchanged": "SCHED_CLS",   # deletes flows judged in Python, never attached
        "ct_sweep_keys": "SCHED_CLS",         # run by the agent's sweep, never attached
        "sock_connect4": ("CGROUP_SOCK_ADDR", "CGROUP_INET4_CONNECT"),
        "sock_sendmsg4": ("CGROUP_SOCK_ADDR", "CGROUP_UDP4_SENDMSG"),
        "sock_recvmsg4": ("CGROUP_SOCK_ADDR", "CGROUP_UDP4_RECVMSG"),
        "sock_peername4": ("CGROUP_SOCK_ADDR", "CGROUP_INET4_GETPEERNAME"),
        "sock_connect6": ("CGROUP_SOCK_ADDR", "CGROUP_INET6_CONNECT"),
        "sock_sendmsg6": ("CGROUP_SOCK_ADDR", "CGROUP_UDP6_SENDMSG"),
        "sock_recvmsg6": ("CGROUP_SOCK_ADDR", "CGROUP_UDP6_RECVMSG"),
        "sock_peername6": ("CGROUP_SOCK_ADDR", "CGROUP_INET6_GETPEERNAME"),
        "bpf_iter__udp": "TRACING",           # the socket reaper, run by the agent, never attached
    },
    ("uplink.c",): {"from_uplink": "SCHED_CLS", "to_uplink": "SCHED_CLS", "xdp_uplink": "XDP",
                    # from_uplink's tail calls (bpf/uplink.c), never attached
                    "from_uplink_new_flow": "SCHED_CLS", "from_uplink_snat": "SCHED_CLS"},
}
# Program arrays the loader fills (pinned, bpf/uplink.c): table -> {slot: program}.
TAIL_CALLS = {"uplink_calls": {0: "from_uplink_new_flow", 1: "from_uplink_snat"}}
SOCK_REAPER = "bpf_iter__udp"
# Programs only some kernels can load: built only when the loader gives their -D flag.
OPTIONAL = {SOCK_REAPER: "-DKFUNC_SOCK_DESTROY="}
DEFAULT_HAIRPIN_ADDR = "169.254.42.1"   # Cilium's choice: link-local, never a pod's address


@dataclass(frozen=True)
class DatapathOptions:
    """Compile-time choices, each a -D for bcc: map sizes, and what a service without endpoints
    answers (kube-proxy rejects with ICMP port unreachable; Cilium can also drop silently)."""
    ct_map_max: int = C.CT_MAX
    frontend_map_max: int = C.NAT_FE_MAX
    backend_map_max: int = C.NAT_BE_MAX
    reject_no_endpoints: bool = True
    trace: bool = False        # bpf_trace_printk of each decision, to /sys/kernel/tracing/trace_pipe
    # Read each skb's checksum state through the kernel's BTF (bpf/kernel.h) where the kernel has it,
    # so most L4 checksums are fixed without helper calls; False: the helpers fix every one.
    skb_csum_btf: bool = True

    def cflags(self) -> list[str]:
        return [f"-DCT_MAP_MAX={self.ct_map_max}", f"-DNAT_FE_MAP_MAX={self.frontend_map_max}",
                f"-DNAT_BE_MAP_MAX={self.backend_map_max}",
                f"-DREJECT_NO_ENDPOINTS={int(self.reject_no_endpoints)}", f"-DEBPFLB_TRACE={int(self.trace)}"]

    def map_sizes(self) -> dict[str, int]:
        """Pinned map name -> the max entries these options give it."""
        return {"ct": self.ct_map_max, "nat_fe": self.frontend_map_max, "nat_be": self.backend_map_max}


class LoadError(RuntimeError):
    """The programs did not compile or load (bcc's own messages, the verifier's log, are on stderr)."""


class MapSizeMismatch(RuntimeError):
    def __init__(self, name: str, pinned: int, wanted: int, pin_dir: str):
        super().__init__(
            f"pinned map {name} in {pin_dir} holds {pinned} entries, the options ask for {wanted}; a pinned "
            f"map cannot be resized: keep its size, or `ebpflb cleanup --pin-dir {pin_dir}` first "
            f"(services are rewritten at once, open connections lose their conntrack)")


# Helper numbers no kernel has: bpf/kernel.h calls one where it means the kfunc
# bpf_cast_to_kern_ctx(), bpf/sock_reaper.c another for bpf_sock_destroy(), and the loader turns
# each such call into the kfunc call (bcc 0.26 cannot emit one).
KFUNC_MARKER_CAST_TO_KERN_CTX = 0x7ffe
KFUNC_MARKER_SOCK_DESTROY = 0x7ffd
BPF_CALL = 0x85                # BPF_JMP | BPF_CALL
BPF_PSEUDO_KFUNC_CALL = 2      # src_reg of a call whose imm is a kernel function's BTF id


def kernel_cflags(facts: SkbCsumFacts | None) -> list[str]:
    """The -D flags for bpf/kernel.h: where this kernel keeps skb->ip_summed, and the marker."""
    if facts is None:
        return []
    return [f"-DKFUNC_CAST_TO_KERN_CTX={KFUNC_MARKER_CAST_TO_KERN_CTX}",
            f"-DSKB_IP_SUMMED_BYTE={facts.ip_summed_byte}", f"-DSKB_IP_SUMMED_SHIFT={facts.ip_summed_shift}"]


def sock_reaper_cflags(facts: SockReaperFacts | None) -> list[str]:
    """The -D flags for bpf/sock_reaper.c: the kfunc's marker and struct sock_common's offsets."""
    if facts is None:
        return []
    return [f"-DKFUNC_SOCK_DESTROY={KFUNC_MARKER_SOCK_DESTROY}", f"-DSKC_DADDR={facts.daddr}",
            f"-DSKC_DPORT={facts.dport}", f"-DSKC_STATE={facts.state}"]


def patch_kfunc_calls(insns, kfuncs: dict[int, int]) -> int:
    """In a program's instructions (a writable byte buffer), turn each call of a marker helper
    number into a call of its kfunc (marker -> BTF id in vmlinux); how many were turned."""
    patched = 0
    for off in range(0, len(insns), 8):
        imm = int.from_bytes(bytes(insns[off + 4:off + 8]), "little", signed=True)
        if insns[off] == BPF_CALL and insns[off + 1] >> 4 == 0 and imm in kfuncs:
            insns[off + 1] = BPF_PSEUDO_KFUNC_CALL << 4 | insns[off + 1] & 0xf
            insns[off + 4:off + 8] = list(kfuncs[imm].to_bytes(4, "little"))
            patched += 1
    return patched


LOCAL_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.M)


def program_text(*sources: Path) -> str:
    """The entry programs, one after the other, with ebpflb's own headers inlined, each once.

    bcc rewrites map accesses (`ct.lookup(...)`) only in the text it is given, not in included
    files; inlining keeps bpf/ split by concern and still lets every header use the maps.
    """
    seen: set[Path] = set()

    def expand(path: Path) -> str:
        def include(match: re.Match) -> str:
            header = (path.parent / match.group(1)).resolve()
            if header in seen:
                return ""
            seen.add(header)
            return f'#line 1 "{header}"\n{expand(header)}\n'
        return LOCAL_INCLUDE.sub(include, path.read_text())

    return "\n".join(f'#line 1 "{source.resolve()}"\n{expand(source.resolve())}'
                     for source in sources).replace("#pragma once", "")


def ensure_bpffs() -> None:
    with open("/proc/self/mounts") as mounts:
        if any(line.split()[1] == BPFFS and line.split()[2] == "bpf" for line in mounts):
            return
    os.makedirs(BPFFS, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", BPFFS], check=True)


class Datapath:
    """The loaded programs (fds by name) and the pinned maps they share."""

    def __init__(self, pin_dir: str, options: DatapathOptions = DatapathOptions()):
        self.pin_dir = os.path.abspath(pin_dir)
        self.options = options
        self.fds: dict[str, int] = {}   # program name -> fd; ours, closed by close()
        self.maps: Maps | None = None
        self.upgrade_aside: str | None = None   # layout 7's maps, moved aside, while upgrading

    def load(self, hairpin_addr: str = DEFAULT_HAIRPIN_ADDR, node_addr: str | None = None,
             netns_cookie: int = 0, flags: int = 0, icmp_rate: int = C.ICMP_RATE_DEFAULT,
             icmp_burst: int = C.ICMP_BURST_DEFAULT) -> "Datapath":
        """Compile and load the programs; `netns_cookie`: the network namespace whose sockets the
        host-socket programs translate (0: none; sockets.netns_cookie()), `flags`: CFG_FLG_*."""
        if not self.pin_dir.startswith(BPFFS + "/"):
            raise ValueError(f"pin dir {self.pin_dir} is not under {BPFFS}")
        ensure_bpffs()
        os.makedirs(self.pin_dir, exist_ok=True)
        # Layout 7's pins (the previous version's) are upgraded (datapath/upgrade.py): set aside
        # now, copied into the new maps below, finished by finish_upgrade() once attached.
        self.upgrade_aside = upgrade.pending(self.pin_dir)
        if os.path.exists(os.path.join(self.pin_dir, "config")):
            found = read_layout_version(self.pin_dir)
            if found == upgrade.FROM_LAYOUT and self.upgrade_aside is None:
                self.upgrade_aside = upgrade.set_aside(self.pin_dir)
            elif found not in (0, LAYOUT_VERSION):
                raise LayoutMismatch(found, LAYOUT_VERSION, self.pin_dir)
        self._check_pinned_sizes()
        facts = skb_csum_facts() if self.options.skb_csum_btf else None
        kfuncs = {KFUNC_MARKER_CAST_TO_KERN_CTX: facts.cast_to_kern_ctx_id} if facts else {}
        reaper = sock_reaper_facts()
        if reaper:
            kfuncs[KFUNC_MARKER_SOCK_DESTROY] = reaper.sock_destroy_id
        self.fds = compile_in_child([f'-DPIN_DIR="{self.pin_dir}"', *self.options.cflags(), *kernel_cflags(facts),
                                     *sock_reaper_cflags(reaper)], kfuncs)
        self.maps = Maps.open(self.pin_dir)
        if self.upgrade_aside:
            # BPF_NOEXIST: an upgrade that died halfway left entries the new programs wrote since.
            copied = upgrade.copy_maps(self.upgrade_aside, self.maps, upgrade.COPIED, upgrade.BPF_NOEXIST)
            log.info("layout %d entries copied: %s", upgrade.FROM_LAYOUT,
                     ", ".join(f"{n} {name}" for name, n in copied.items() if n))
        self.write_config(hairpin_addr, node_addr, netns_cookie, flags, icmp_rate, icmp_burst)
        return self

    def finish_upgrade(self) -> None:
        """Once the new programs are attached everywhere: the old programs' last flows, and the old
        maps removed (a no-op without an upgrade)."""
        if self.upgrade_aside:
            upgrade.finish(self.upgrade_aside, self.maps)
            self.upgrade_aside = None

    def _check_pinned_sizes(self) -> None:
        """bcc takes a pinned map as it is: a size that differs must be said, not ignored."""
        from ebpflb.datapath import libbpf
        for name, wanted in self.options.map_sizes().items():
            path = os.path.join(self.pin_dir, name)
            if not os.path.exists(path):
                continue
            fd = libbpf.obj_get(path)
            try:
                pinned = libbpf.map_info(fd).max_entries
            finally:
                os.close(fd)
            if pinned != wanted:
                raise MapSizeMismatch(name, pinned, wanted, self.pin_dir)

    def write_config(self, hairpin_addr: str = DEFAULT_HAIRPIN_ADDR, node_addr: str | None = None,
                     netns_cookie: int = 0, flags: int = 0, icmp_rate: int = C.ICMP_RATE_DEFAULT,
                     icmp_burst: int = C.ICMP_BURST_DEFAULT, hairpin_addr6: str | None = None,
                     node_addr6: str | None = None) -> None:
        """What the programs need to know; written only when it differs. icmp_rate, icmp_burst: the
        ICMP errors the programs may send node-wide, per second and at once (bpf/icmp_reject.h).
        hairpin_addr6, node_addr6: the IPv6 twins (layout 8 has room; no program reads them yet)."""
        want = ffi.new("struct config *", {"layout_version": LAYOUT_VERSION,
                                           "flags": flags | C.CFG_FLG_ICMP_RATE_LIMIT,
                                           "hairpin_addr": ip_be(hairpin_addr),
                                           "node_addr": ip_be(node_addr) if node_addr else 0,
                                           "netns_cookie": netns_cookie,
                                           "icmp_rate": icmp_rate, "icmp_burst": icmp_burst})
        for field, addr in (("hairpin_addr6", hairpin_addr6), ("node_addr6", node_addr6)):
            if addr:
                ffi.memmove(getattr(want, field), socket.inet_pton(socket.AF_INET6, addr), 16)
        have = self.maps.read_config()
        if to_bytes(have) != to_bytes(want):
            self.maps.config.update(ffi.new("__u32 *", 0), want)

    def close(self) -> None:
        if self.maps:
            self.maps.close()
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


# The child runs this very ebpflb (its directory first on sys.path), whatever the working directory holds.
_CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); from ebpflb.datapath.loader import _child_main; "
          "sys.exit(_child_main(int(sys.argv[2]), sys.argv[3]))")


def compile_in_child(cflags: list[str], kfuncs: dict[int, int] | None = None) -> dict[str, int]:
    """Every program of PROGRAMS (an OPTIONAL one only with its flag in cflags) compiled and loaded
    by bcc in a child process (which pins the maps): program name -> fd, received over a unix
    socket. `kfuncs`: marker helper number -> kfunc BTF id."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    skip = {name for name, flag in OPTIONAL.items() if not any(f.startswith(flag) for f in cflags)}
    units = [[list(files), {name: kind for name, kind in programs.items() if name not in skip}]
             for files, programs in PROGRAMS.items()]
    names = [name for _, programs in units for name in programs]
    root = str(Path(__file__).resolve().parents[2])
    try:
        with theirs:
            child = subprocess.Popen([sys.executable, "-c", _CHILD, root, str(theirs.fileno()),
                                      json.dumps({"cflags": cflags, "kfuncs": kfuncs or {}, "units": units})],
                                     pass_fds=(theirs.fileno(),))
        try:
            # EOF (b"") if the child dies before it answers: our copy of its end is closed.
            message, fds, _, _ = socket.recv_fds(ours, 65536, len(names))
        finally:
            code = child.wait()
    finally:
        ours.close()
    answer = json.loads(message) if message else {"error": f"the compiler process exited with {code}"}
    if "error" in answer or answer["names"] != names[:len(fds)] or len(fds) != len(names):
        for fd in fds:
            os.close(fd)
        raise LoadError(answer.get("error") or f"the compiler process sent {answer} with {len(fds)} fds")
    return dict(zip(names, fds))


def _child_main(sock_fd: int, request_json: str) -> int:
    """In the child: compile, load, send the fds; the maps stay pinned and the programs stay alive
    through the parent's fds when this process exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C at start-up: the agent decides, as before
    request = json.loads(request_json)
    kfuncs = {int(marker): btf_id for marker, btf_id in request["kfuncs"].items()}
    with socket.socket(fileno=sock_fd) as sock:
        try:
            from bcc import BPF, BPFAttachType   # only ever imported here
            fds = {}
            for files, programs in request["units"]:
                obj = BPF(text=program_text(*(BPF_DIR / f for f in files)).encode(), cflags=request["cflags"])
                _fill_constant_tables(obj)
                for name, kind in programs.items():
                    if kfuncs:
                        patch_kfunc_calls(_bcc_instructions(obj, name.encode()), kfuncs)
                    kind, attach = (kind, None) if isinstance(kind, str) else kind
                    extra = {"attach_type": getattr(BPFAttachType, attach)} if attach else {}
                    fds[name] = obj.load_func(name.encode(), getattr(BPF, kind), **extra).fd
                _fill_tail_calls(obj, fds)
        except Exception as err:   # compile errors, verifier rejections: the parent raises LoadError
            sock.send(json.dumps({"error": f"{type(err).__name__}: {err}"}).encode())
            return 1
        socket.send_fds(sock, [json.dumps({"names": list(fds)}).encode()], list(fds.values()))
    return 0


def _fill_tail_calls(obj, fds: dict) -> None:
    """Point an object's program arrays (TAIL_CALLS) at the programs just loaded, before any of its
    programs is handed out (attached)."""
    import ctypes
    for table_name, slots in TAIL_CALLS.items():
        try:
            table = obj[table_name.encode()]
        except KeyError:
            continue
        for slot, program in slots.items():
            table[ctypes.c_int(slot)] = ctypes.c_int(fds[program])


def _fill_constant_tables(obj) -> None:
    """The tables of constants an object's programs read (not pinned: each object has its own), filled
    before any of its programs is handed out: the powers bpf/sctp.h updates SCTP's CRC32c with."""
    from ebpflb.datapath.sctp_crc import powers
    try:
        table = obj[b"sctp_crc_powers"]
    except KeyError:
        return
    values = powers()
    table.items_update_batch((table.Key * len(values))(*map(table.Key, range(len(values)))),
                             (table.Leaf * len(values))(*map(table.Leaf, values)))


def _bcc_instructions(obj, name: bytes):
    """The compiled, not yet loaded instructions bcc holds for program `name`, writable in place:
    load_func() loads exactly these."""
    import ctypes
    from bcc.libbcc import lib as bcc_lib
    start = bcc_lib.bpf_function_start(obj.module, name)
    if not start:
        raise LoadError(f"bcc has no program {name.decode()}")
    return (ctypes.c_uint8 * bcc_lib.bpf_function_size(obj.module, name)).from_address(start)
