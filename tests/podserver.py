"""Tiny stand-ins for pod workloads and pod-side clients, run inside the lab's pod namespaces.

Standard library only (it runs with the lab's interpreter under `ip netns exec`).

    podserver.py serve NAME [--http-port 8080] [--udp-port 5353] [--addr 0.0.0.0]
        HTTP on TCP: GET / -> body NAME; GET /client -> "ip:port" of the peer;
        GET /udp-peers -> one line "ip:port count" per UDP peer seen so far.
        UDP: every datagram is answered with NAME.
        Prints "ready" on stdout once both sockets listen.

    podserver.py udp-client IP PORT [--reconnect]     (and tcp-client IP PORT)
        One connected UDP socket (or one TCP connection) for the whole run (one source port).
        Prints "port N" (its local port) first, then for every stdin line "go [TIMEOUT]" sends one
        message and prints "reply TEXT", "timeout" or "error ERRNO_NAME".
        The server side of TCP is a line echo on 9000 that answers every message with NAME.
        --reconnect: a socket aborted under it (ECONNABORTED, then EDESTADDRREQ: the kernel
        disconnected it) is connected again to IP PORT and the message sent again, as resolvers
        do; stdin "reconnects" prints "reconnects N".

    podserver.py udp-ask IP PORT connected|unconnected [COUNT] [TIMEOUT]
        COUNT queries from one UDP socket (connect() + send(), or sendto() each time); one JSON
        line each: {"reply", "source" (recvfrom's address), "peer" (getpeername(), connected only),
        "kernel_peer" (the socket's peer in /proc/net/udp, which no BPF hook rewrites), "error"}.

    podserver.py tcp-ask IP PORT [TIMEOUT]
        One TCP connection, GET /; one JSON line: {"body", "peer", "kernel_peer", "error", "ms"}.

    podserver.py ping IP [COUNT] [TIMEOUT]
        ICMP echo over a raw socket (this machine has no ping binary). Prints one line per echo
        ("reply from IP seq N time MS" or "timeout seq N"); exit 0 if any reply came back.

    podserver.py echo IP PORT SIZE [TIMEOUT]
        POSTs SIZE random bytes to the HTTP server's /echo, which sends them back; prints "ok
        SECONDS" when the same bytes came back, else "error TEXT" (exit 1).

    podserver.py udp-echo IP PORT SIZE [TIMEOUT]
        One datagram of SIZE bytes ("echo " and random bytes) from a connected UDP socket; `serve`
        sends it back whole. Prints "ok SECONDS" when the same bytes came back, else "error TEXT".

    podserver.py upload IP PORT SIZE [TIMEOUT]
        POSTs SIZE random bytes to the HTTP server's / (which answers "NAME LENGTH SHA256": large
        one way only); prints "ok SECONDS NAME" when the answer names those bytes, else "error TEXT".

    podserver.py http-many IP PORT COUNT [TIMEOUT] [PATH]
        COUNT sequential HTTP GETs, each on a new TCP connection; prints one line per request:
        "ok BODY" or "error TEXT".

    podserver.py sctp-many IP PORT COUNT [TIMEOUT]
        COUNT SCTP packets (common header and a DATA chunk, a valid CRC32c) over a raw socket, each
        from a new source port, each answered by `serve`'s SCTP stand-in; prints one line per packet:
        "ok NAME" when the answer came from IP:PORT to that port with a valid CRC32c, else
        "error bad-crc", "error timeout".
        (The machine's kernel has no SCTP: raw sockets carry it, and its CRC32c is checked here.)

`serve` also answers SCTP to SCTP_PORT over a raw socket: each packet whose CRC32c checks out gets a
DATA chunk holding NAME back (ports swapped, its verification tag); a packet whose CRC is wrong gets
nothing, as an SCTP stack would drop it.
"""
import errno
import hashlib
import http.server
import select
import socket
import socketserver
import sys
import threading
from collections import Counter


TCP_ECHO_PORT = 9000
SCTP_PORT = 9101
IPPROTO_SCTP = 132


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def sctp_packet(sport: int, dport: int, vtag: int, payload: bytes) -> bytes:
    """Common header and one DATA chunk (unordered, whole message) holding `payload`, CRC32c filled in."""
    chunk = bytes((0, 7)) + (16 + len(payload)).to_bytes(2, "big") + (1).to_bytes(4, "big") + bytes(4) + \
        bytes(4) + payload
    chunk += bytes(-len(chunk) % 4)
    packet = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + vtag.to_bytes(4, "big") + bytes(4) + chunk
    return packet[:8] + crc32c(packet).to_bytes(4, "little") + packet[12:]


def sctp_valid(packet: bytes) -> bool:
    return len(packet) >= 12 and crc32c(packet[:8] + bytes(4) + packet[12:]) == int.from_bytes(packet[8:12], "little")


def sctp_data(packet: bytes) -> bytes:
    """The first DATA chunk's payload."""
    length = int.from_bytes(packet[14:16], "big")
    return packet[12 + 16:12 + length] if len(packet) >= 28 and packet[12] == 0 else b""


def sctp_responder(name: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
    while True:
        data, peer = sock.recvfrom(65535)
        packet = data[(data[0] & 0x0F) * 4:]
        if len(packet) < 12 or int.from_bytes(packet[2:4], "big") != SCTP_PORT or not sctp_valid(packet):
            continue
        answer = sctp_packet(SCTP_PORT, int.from_bytes(packet[0:2], "big"), int.from_bytes(packet[4:8], "big"),
                             name.encode())
        try:
            sock.sendto(answer, (peer[0], 0))
        except OSError:
            pass


def serve(name: str, http_port: int = 8080, udp_port: int = 5353, addr: str = "0.0.0.0") -> None:
    udp_peers: Counter = Counter()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            if self.path == "/client":
                body = f"{self.client_address[0]}:{self.client_address[1]}"
            elif self.path == "/udp-peers":
                with lock:
                    body = "".join(f"{peer} {n}\n" for peer, n in sorted(udp_peers.items()))
            elif self.path.startswith("/pad/"):   # name, then N filler bytes: large answers
                body = name + "\n" + "x" * int(self.path[5:])
            else:
                body = name
            self._answer(body)

        def do_POST(self):   # "name length sha256" of what was sent: large requests
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/echo":   # what was sent, back: large both ways
                self._answer(data)
                return
            self._answer(f"{name} {len(data)} {hashlib.sha256(data).hexdigest()}")

        def _answer(self, body):
            data = body.encode() if isinstance(body, str) else body
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # quiet
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 256

    class Server6(Server):   # IPv6 only: IPv4 clients keep their own listener and plain peer addresses
        address_family = socket.AF_INET6

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            super().server_bind()

    # The IPv6 twins listen when the IPv4 side listens on every address: a server bound to one
    # IPv4 address shares its netns with others on the same ports (test_host_sockets.py).
    every_address = addr == "0.0.0.0"
    httpd = Server((addr, http_port), Handler)

    def udp_socket(family, bind_addr):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((bind_addr, udp_port))
        return sock

    def udp_loop(udp):
        reply = name.encode()
        while True:
            try:
                data, peer = udp.recvfrom(65535)
            except OSError:
                continue
            with lock:
                udp_peers[f"{peer[0]}:{peer[1]}"] += 1
            try:
                # "echo ...": the datagram back whole (large ones come back in fragments)
                udp.sendto(data if data.startswith(b"echo ") else reply, peer)
            except OSError:
                pass

    class EchoName(socketserver.BaseRequestHandler):
        def handle(self):   # a long-lived TCP connection: one answer per message
            while self.request.recv(65535):
                self.request.sendall(name.encode())

    class TcpServer(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    class TcpServer6(TcpServer):
        address_family = socket.AF_INET6

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            super().server_bind()

    servers = [TcpServer((addr, TCP_ECHO_PORT), EchoName)]
    udps = [udp_socket(socket.AF_INET, addr)]
    if every_address:
        servers += [TcpServer6(("::", TCP_ECHO_PORT), EchoName), Server6(("::", http_port), Handler)]
        udps.append(udp_socket(socket.AF_INET6, "::"))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    for udp in udps:
        threading.Thread(target=udp_loop, args=(udp,), daemon=True).start()
    threading.Thread(target=sctp_responder, args=(name,), daemon=True).start()
    print("ready", flush=True)
    httpd.serve_forever()


def client(kind: int, ip: str, port: int, reconnect: bool = False) -> None:
    sock = socket.socket(_family(ip), kind)
    sock.connect((ip, port))
    print(f"port {sock.getsockname()[1]}", flush=True)
    reconnects = 0
    for line in sys.stdin:
        words = line.split()
        if words == ["reconnects"]:
            print(f"reconnects {reconnects}", flush=True)
            continue
        if not words or words[0] != "go":
            continue
        timeout = float(words[1]) if len(words) > 1 else 1.0
        # drop late replies to earlier requests so each answer belongs to this request
        while select.select([sock], [], [], 0)[0]:
            try:
                sock.recv(65535)
            except OSError:
                break
        try:
            try:
                sock.send(b"ping")
            except OSError as e:
                if not reconnect or e.errno not in (errno.ECONNABORTED, errno.EDESTADDRREQ):
                    raise
                sock.connect((ip, port))
                reconnects += 1
                sock.send(b"ping")
            ready = select.select([sock], [], [], timeout)[0]
            if not ready:
                print("timeout", flush=True)
                continue
            data = sock.recv(65535)
            if not data:
                print("error closed", flush=True)
                continue
            print("reply " + data.decode(errors="replace").replace("\n", " "), flush=True)
        except OSError as e:
            print("error " + errno.errorcode.get(e.errno, str(e.errno)), flush=True)


def kernel_peer(sock, proto: str) -> str | None:
    """The socket's peer as the kernel holds it (/proc/net/udp, tcp, udp6, tcp6: no BPF hook
    rewrites it)."""
    import os
    import struct
    inode = os.fstat(sock.fileno()).st_ino
    v6 = sock.family == socket.AF_INET6
    with open(f"/proc/net/{proto}{'6' if v6 else ''}") as table:
        for row in list(table)[1:]:
            fields = row.split()
            if int(fields[9]) == inode:
                addr, port = fields[2].split(":")
                raw = b"".join(struct.pack("<I", int(addr[i:i + 8], 16)) for i in range(0, len(addr), 8))
                return f"{socket.inet_ntop(sock.family, raw)}:{int(port, 16)}"
    return None


def _family(ip: str) -> int:
    """An IPv6 socket for an IPv6 (or IPv4-mapped, ::ffff:a.b.c.d) address, as dual-stack programs use."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _addr(pair) -> str | None:
    return f"{pair[0]}:{pair[1]}" if pair else None   # (an IPv6 pair's flow info and scope left out)


def udp_ask(ip: str, port: int, mode: str, count: int = 1, timeout: float = 1.0) -> None:
    import json
    sock = socket.socket(_family(ip), socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    connected = mode == "connected"
    for _ in range(count):
        out = {"reply": None, "source": None, "peer": None, "kernel_peer": None, "error": None}
        try:
            if connected:
                sock.connect((ip, port))
                out["peer"] = _addr(sock.getpeername())
                out["kernel_peer"] = kernel_peer(sock, "udp")
                sock.send(b"ping")
            else:
                sock.sendto(b"ping", (ip, port))
            data, source = sock.recvfrom(65535)
            out["reply"], out["source"] = data.decode(errors="replace"), _addr(source)
        except socket.timeout:
            out["error"] = "timeout"
        except OSError as e:
            out["error"] = errno.errorcode.get(e.errno, str(e))
        print(json.dumps(out), flush=True)


def tcp_ask(ip: str, port: int, timeout: float = 2.0) -> None:
    import json
    import time
    out = {"body": None, "peer": None, "kernel_peer": None, "error": None, "ms": None}
    sock = socket.socket(_family(ip))
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        sock.connect((ip, port))
        out["peer"], out["kernel_peer"] = _addr(sock.getpeername()), kernel_peer(sock, "tcp")
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65535):
            chunks.append(chunk)
        out["body"] = b"".join(chunks).partition(b"\r\n\r\n")[2].decode(errors="replace")
    except socket.timeout:
        out["error"] = "timeout"
    except OSError as e:
        out["error"] = errno.errorcode.get(e.errno, str(e))
    finally:
        out["ms"] = (time.monotonic() - started) * 1e3
        sock.close()
    print(json.dumps(out), flush=True)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(ip: str, count: int = 1, timeout: float = 2.0) -> int:
    import os
    import struct
    import time
    v6 = ":" in ip
    # ICMPv6: the kernel fills the checksum (it covers a pseudo-header) and hands no IP header up
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) if v6 else \
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    echo_request, echo_reply, unreachable = (128, 129, 1) if v6 else (8, 0, 3)
    ident = os.getpid() & 0xFFFF
    replies = 0
    for seq in range(1, count + 1):
        payload = b"ebpflb-lab-ping"
        hdr = struct.pack("!BBHHH", echo_request, 0, 0, ident, seq)
        pkt = struct.pack("!BBHHH", echo_request, 0, 0 if v6 else _checksum(hdr + payload), ident, seq) + payload
        start = time.monotonic()
        sock.sendto(pkt, (ip, 0))
        deadline = start + timeout
        got = False
        while not got:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            data, peer = sock.recvfrom(65535)
            ihl = 0 if v6 else (data[0] & 0x0F) * 4
            if len(data) < ihl + 8:
                continue
            icmp_type, _, _, r_ident, r_seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if icmp_type == echo_reply and r_ident == ident and r_seq == seq:
                got = True
                replies += 1
                ms = (time.monotonic() - start) * 1000
                print(f"reply from {peer[0]} seq {seq} time {ms:.2f}", flush=True)
            elif icmp_type == unreachable and len(data) >= ihl + 8 + (48 if v6 else 28):
                inner = data[ihl + 8:]
                iihl = 40 if v6 else (inner[0] & 0x0F) * 4
                _, _, _, i_ident, i_seq = struct.unpack("!BBHHH", inner[iihl:iihl + 8])
                if i_ident == ident and i_seq == seq:
                    print(f"unreachable from {peer[0]} seq {seq} code {data[ihl + 1]}", flush=True)
                    break
        if not got:
            print(f"timeout seq {seq}", flush=True)
    return 0 if replies else 1


def http_many(ip: str, port: int, count: int, timeout: float = 2.0, path: str = "/") -> None:
    request = f"GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n".encode()
    for _ in range(count):
        try:
            with socket.create_connection((ip, port), timeout=timeout) as s:
                s.sendall(request)
                chunks = []
                while True:
                    chunk = s.recv(65535)
                    if not chunk:
                        break
                    chunks.append(chunk)
            raw = b"".join(chunks)
            head, _, body = raw.partition(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            if " 200 " not in status + " ":
                print(f"error bad status {status!r}", flush=True)
            else:
                print("ok " + body.decode(errors="replace").replace("\n", " "), flush=True)
        except socket.timeout:
            print("error timeout", flush=True)
        except OSError as e:
            print("error " + errno.errorcode.get(e.errno, str(e)), flush=True)


def _post(ip: str, port: int, path: str, data: bytes, timeout: float, chunk: int):
    """POST data over HTTP/1.0 and read the answer to its end: (body, None), or (None, "error TEXT")."""
    import time
    request = (f"POST {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data
    started, chunks = time.monotonic(), []
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.sendall(request)
            while True:
                s.settimeout(max(0.1, timeout - (time.monotonic() - started)))
                got = s.recv(chunk)
                if not got:
                    break
                chunks.append(got)
    except socket.timeout:
        return None, f"error timeout, {sum(map(len, chunks))} bytes back"
    except OSError as e:
        return None, "error " + errno.errorcode.get(e.errno, str(e))
    return b"".join(chunks).partition(b"\r\n\r\n")[2], None


def echo(ip: str, port: int, size: int, timeout: float) -> int:
    """POST size random bytes to /echo and check the same come back: "ok SECONDS", or "error TEXT"."""
    import os
    import time
    data = os.urandom(size)
    started = time.monotonic()
    body, error = _post(ip, port, "/echo", data, timeout, 1 << 20)
    if error:
        print(error, flush=True)
        return 1
    if body != data:
        print(f"error {len(body)} bytes back, {'not ' if len(body) == size else ''}the ones sent", flush=True)
        return 1
    print(f"ok {time.monotonic() - started:.3f}", flush=True)
    return 0


def udp_echo(ip: str, port: int, size: int, timeout: float) -> int:
    import os
    import time
    data = b"echo " + os.urandom(max(0, size - 5))
    started = time.monotonic()
    try:
        with socket.socket(_family(ip), socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((ip, port))
            s.send(data)
            back = s.recv(65535)
    except socket.timeout:
        print("error timeout", flush=True)
        return 1
    except OSError as e:
        print("error " + errno.errorcode.get(e.errno, str(e)), flush=True)
        return 1
    if back != data:
        print(f"error {len(back)} bytes back, not the {len(data)} sent", flush=True)
        return 1
    print(f"ok {time.monotonic() - started:.3f}", flush=True)
    return 0


def upload(ip: str, port: int, size: int, timeout: float) -> int:
    import os
    import time
    data = os.urandom(size)
    started = time.monotonic()
    body, error = _post(ip, port, "/", data, timeout, 1 << 16)
    if error:
        print(error, flush=True)
        return 1
    words = body.decode(errors="replace").split()
    if len(words) != 3 or words[1:] != [str(size), hashlib.sha256(data).hexdigest()]:
        print(f"error answer {' '.join(words)[:80]!r}", flush=True)
        return 1
    print(f"ok {time.monotonic() - started:.3f} {words[0]}", flush=True)
    return 0


def sctp_many(ip: str, port: int, count: int, timeout: float = 2.0) -> None:
    import os
    import time
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
    for i in range(count):
        sport = 20000 + (os.getpid() * 7 + i * 13) % 30000
        vtag = int.from_bytes(os.urandom(4), "big") | 1
        sock.sendto(sctp_packet(sport, port, vtag, b"hello"), (ip, 0))
        deadline = time.monotonic() + timeout
        outcome = "error timeout"
        while time.monotonic() < deadline:
            if not select.select([sock], [], [], deadline - time.monotonic())[0]:
                break
            data, peer = sock.recvfrom(65535)
            packet = data[(data[0] & 0x0F) * 4:]
            if peer[0] != ip or len(packet) < 12 or int.from_bytes(packet[0:2], "big") != port or \
                    int.from_bytes(packet[2:4], "big") != sport:
                continue
            outcome = "ok " + sctp_data(packet).decode(errors="replace") if sctp_valid(packet) else "error bad-crc"
            break
        print(outcome, flush=True)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "serve":
        name = args[0]
        http_port, udp_port, addr = 8080, 5353, "0.0.0.0"
        rest = args[1:]
        while rest:
            opt, val, rest = rest[0], rest[1], rest[2:]
            if opt == "--http-port":
                http_port = int(val)
            elif opt == "--udp-port":
                udp_port = int(val)
            elif opt == "--addr":
                addr = val
            else:
                raise SystemExit(f"unknown option {opt}")
        serve(name, http_port, udp_port, addr)
    elif cmd == "udp-client":
        client(socket.SOCK_DGRAM, args[0], int(args[1]), reconnect="--reconnect" in args[2:])
    elif cmd == "udp-ask":
        udp_ask(args[0], int(args[1]), args[2], int(args[3]) if len(args) > 3 else 1,
                float(args[4]) if len(args) > 4 else 1.0)
    elif cmd == "tcp-ask":
        tcp_ask(args[0], int(args[1]), float(args[2]) if len(args) > 2 else 2.0)
    elif cmd == "tcp-client":
        client(socket.SOCK_STREAM, args[0], int(args[1]))
    elif cmd == "ping":
        return ping(args[0], int(args[1]) if len(args) > 1 else 1,
                    float(args[2]) if len(args) > 2 else 2.0)
    elif cmd == "echo":
        return echo(args[0], int(args[1]), int(args[2]), float(args[3]) if len(args) > 3 else 10.0)
    elif cmd == "udp-echo":
        return udp_echo(args[0], int(args[1]), int(args[2]), float(args[3]) if len(args) > 3 else 3.0)
    elif cmd == "upload":
        return upload(args[0], int(args[1]), int(args[2]), float(args[3]) if len(args) > 3 else 10.0)
    elif cmd == "sctp-many":
        sctp_many(args[0], int(args[1]), int(args[2]), float(args[3]) if len(args) > 3 else 2.0)
    elif cmd == "http-many":
        http_many(args[0], int(args[1]), int(args[2]),
                  float(args[3]) if len(args) > 3 else 2.0, args[4] if len(args) > 4 else "/")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
