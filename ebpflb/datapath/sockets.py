"""Host sockets: which network namespace bpf/sock.c translates (its cookie, in the config map),
and the reaper that aborts connected UDP sockets left on a backend that went (bpf/sock_reaper.c).
"""
import os
import socket
import struct

from ebpflb.datapath import libbpf
from ebpflb.datapath.maps import Maps
from ebpflb.datapath.structs import C, addr16, addr_family, ffi, port_be

SO_NETNS_COOKIE = 71     # Linux >= 5.14
BPF_TRACE_ITER = 28


def netns_cookie() -> int:
    """The cookie of the calling thread's network namespace, as bpf_get_netns_cookie() gives it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


class SocketReaper:
    """Runs bpf/sock_reaper.c's iterator over the UDP sockets of the calling thread's network
    namespace (the agent's)."""

    def __init__(self, maps: Maps, prog_fd: int):
        self.maps = maps
        self.link = libbpf.link_create(prog_fd, 0, BPF_TRACE_ITER)

    def abort_udp_sockets_to(self, gone: set[tuple[int, str, int]]) -> int:
        """Abort the connected UDP sockets bpf/sock.c pointed at (service id, backend addr, port)
        that left: their owners get ECONNABORTED and connect again, to a live backend. How many."""
        aborted = 0
        gone = sorted(gone)
        for start in range(0, len(gone), C.SOCK_GONE_MAX):
            keys = []
            for svc_id, addr, port in gone[start:start + C.SOCK_GONE_MAX]:
                key = ffi.new("struct sock_gone_key *", {"svc_id": svc_id, "port": port_be(port),
                                                         "family": addr_family(addr)})
                ffi.memmove(key.addr6, addr16(addr), 16)
                self.maps.sock_gone.update(key, ffi.new("__u32 *", 0))
                keys.append(key)
            try:
                fd = libbpf.iter_create(self.link)
                try:
                    while os.read(fd, 4096):
                        pass
                finally:
                    os.close(fd)
                for key in keys:
                    value = self.maps.sock_gone.lookup(key)
                    aborted += value[0] if value else 0
            finally:
                for key in keys:
                    self.maps.sock_gone.delete(key)
        return aborted

    def close(self) -> None:
        if self.link >= 0:
            os.close(self.link)
            self.link = -1
