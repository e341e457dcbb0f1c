"""Continuous traffic to one address from inside a lab pod, for the reliability suite: what a
service's clients would notice while everything around the data plane fails.

Three kinds of traffic run side by side until stdin says "stop" (or closes):

- HTTP on a new TCP connection per request (several workers): every failure is kept with its time;
- long-lived TCP connections to the pod servers' line echo: each must keep answering, always
  with the same backend's name;
- UDP flows (one connected socket each): every answer's backend is noted where it changes, so a
  flow moved off a removed backend shows when it moved. "reopen-udp" on stdin gives every flow a
  new socket (a new source port, so a fresh backend choice); it answers "udp NAME NAME ...".

It prints "started" once every long-lived connection and UDP flow has answered, and at the end
one JSON line, the report. Times are CLOCK_MONOTONIC, which the test process shares.

Standard library only: it runs with the lab's interpreter under `ip netns exec`.

    loadgen.py IP [--http-port 8080] [--echo-port 9000] [--udp-port 5353] [--http-workers 2]
                  [--long-lived 4] [--udp-flows 4]
"""
import argparse
import json
import select
import socket
import sys
import threading
import time

HTTP_TIMEOUT_S = 3.0        # a SYN lost once is retransmitted after 1 s: still not a failure
LONG_LIVED_INTERVAL_S = 0.1
UDP_INTERVAL_S = 0.05
UDP_TIMEOUT_S = 0.5


def _error_text(err: Exception) -> str:
    return type(err).__name__ + (f" {err}" if str(err) else "")


class HttpLoad(threading.Thread):
    def __init__(self, ip: str, port: int, stopping: threading.Event):
        super().__init__(daemon=True)
        self.addr, self.stopping = (ip, port), stopping
        self.request = f"GET / HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n".encode()
        self.ok, self.failures, self.backends, self.latencies, self.slow = 0, [], {}, [], []

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                with socket.create_connection(self.addr, timeout=HTTP_TIMEOUT_S) as s:
                    s.sendall(self.request)
                    raw = b""
                    while chunk := s.recv(65535):
                        raw += chunk
                head, _, body = raw.partition(b"\r\n\r\n")
                if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                    raise RuntimeError(f"status {head[:40]!r}")
                name = body.decode(errors="replace")
                self.backends[name] = self.backends.get(name, 0) + 1
                self.ok += 1
                took = time.monotonic() - started
                self.latencies.append(took)
                if took > 1.0:   # a lost SYN is retransmitted after 1 s: late, but not failed
                    self.slow.append((started, took))
            except Exception as err:
                self.failures.append((started, _error_text(err)))
                time.sleep(0.05)   # don't spin on a refused port


class LongLived(threading.Thread):
    """One TCP connection for the whole run; broken at the first failure or change of backend."""

    def __init__(self, ip: str, port: int, stopping: threading.Event):
        super().__init__(daemon=True)
        self.stopping = stopping
        self.sock = socket.create_connection((ip, port), timeout=HTTP_TIMEOUT_S)
        self.backend, self.answers, self.broken = None, 0, None
        self.answered = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set() and self.broken is None:
            now = time.monotonic()
            try:
                self.sock.sendall(b"ping\n")
                data = self.sock.recv(65535)
                if not data:
                    raise RuntimeError("closed by peer")
                name = data.decode(errors="replace").strip()
                if self.backend is None:
                    self.backend = name
                elif name != self.backend:
                    raise RuntimeError(f"answered by {name}, not {self.backend}")
                self.answers += 1
                self.answered.set()
            except Exception as err:
                self.broken = (now, _error_text(err))
                self.answered.set()
            self.stopping.wait(LONG_LIVED_INTERVAL_S)
        self.sock.close()


class UdpFlow(threading.Thread):
    """A connected UDP socket asking every UDP_INTERVAL_S. changes: (time, generation, backend) each
    time the answering backend changes or the socket is reopened; timeouts: (time, generation)."""

    def __init__(self, ip: str, port: int, stopping: threading.Event):
        super().__init__(daemon=True)
        self.addr, self.stopping = (ip, port), stopping
        self.lock = threading.Lock()
        self.generation, self.sock = 0, self._socket()
        self.backend = None
        self.answers, self.changes, self.timeouts = 0, [], []
        self.answered = threading.Event()

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(self.addr)
        return sock

    def reopen(self) -> None:
        with self.lock:
            self.sock.close()
            self.sock, self.generation, self.backend = self._socket(), self.generation + 1, None
            self.answered.clear()

    def run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                sock, generation = self.sock, self.generation
                now = time.monotonic()
                try:
                    while select.select([sock], [], [], 0)[0]:   # late answers to earlier asks
                        sock.recv(65535)
                    sock.send(b"ping")
                    if select.select([sock], [], [], UDP_TIMEOUT_S)[0]:
                        name = sock.recv(65535).decode(errors="replace").strip()
                        self.answers += 1
                        if name != self.backend:
                            self.backend = name
                            self.changes.append((now, generation, name))
                        self.answered.set()
                    else:
                        self.timeouts.append((now, generation))
                except OSError as err:
                    self.timeouts.append((now, generation, _error_text(err)))
            self.stopping.wait(UDP_INTERVAL_S)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("ip")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--echo-port", type=int, default=9000)
    parser.add_argument("--udp-port", type=int, default=5353)
    parser.add_argument("--http-workers", type=int, default=2)
    parser.add_argument("--long-lived", type=int, default=4)
    parser.add_argument("--udp-flows", type=int, default=4)
    args = parser.parse_args(argv)

    stopping = threading.Event()
    started = time.monotonic()
    http = [HttpLoad(args.ip, args.http_port, stopping) for _ in range(args.http_workers)]
    long_lived = [LongLived(args.ip, args.echo_port, stopping) for _ in range(args.long_lived)]
    udp = [UdpFlow(args.ip, args.udp_port, stopping) for _ in range(args.udp_flows)]
    for worker in (*http, *long_lived, *udp):
        worker.start()
    for flow in (*long_lived, *udp):
        flow.answered.wait(10)
    print("started", flush=True)

    for line in sys.stdin:
        command = line.strip()
        if command == "stop":
            break
        if command == "reopen-udp":
            for flow in udp:
                flow.reopen()
            for flow in udp:
                flow.answered.wait(5)
            print("udp " + " ".join(str(flow.backend) for flow in udp), flush=True)
    stopping.set()
    for worker in (*http, *long_lived, *udp):
        worker.join(timeout=HTTP_TIMEOUT_S + 2)

    latencies = sorted(t for w in http for t in w.latencies)
    backends: dict[str, int] = {}
    for w in http:
        for name, n in w.backends.items():
            backends[name] = backends.get(name, 0) + n
    report = {
        "seconds": time.monotonic() - started,
        "http": {"ok": sum(w.ok for w in http), "failures": sorted(f for w in http for f in w.failures),
                 "backends": backends,
                 "latency_p50": latencies[len(latencies) // 2] if latencies else None,
                 "latency_max": latencies[-1] if latencies else None,
                 "over_1s": sorted(x for w in http for x in w.slow)},
        "long_lived": [{"backend": c.backend, "answers": c.answers, "broken": c.broken} for c in long_lived],
        "udp": [{"answers": f.answers, "changes": f.changes, "timeouts": f.timeouts} for f in udp],
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
