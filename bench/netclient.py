"""The end-to-end benchmark's own client and server, run inside a lab pod's network namespace.
Every command prints one JSON line (times in microseconds).

    netclient.py serve-close PORT
        accept, close at once (the server closes first, so TIME_WAIT stays on the server side);
        prints "ready". The cheapest server there is: connection figures measure the path.
    netclient.py request IP PORT COUNT
        COUNT sequential HTTP/1.0 GETs, each on a new connection: connect, send, read to EOF,
        close. {"connect_us": [...], "request_us": [...], "errors": N, "first_error": ...}
    netclient.py connect IP PORT COUNT
        COUNT sequential connections: connect (timed), wait for the server's FIN, close.
        {"connect_us": [...], "errors": N}
    netclient.py rate IP PORT SECONDS PROCS
        PROCS processes (forked: same namespace) open connections as connect does, as fast as
        they can, for SECONDS. {"connections": N, "seconds": S, "per_second": R, "errors": N}
"""
import errno
import json
import os
import socket
import sys
import time

TIMEOUT = 2.0


def _error(e: OSError) -> str:
    return "timeout" if isinstance(e, socket.timeout) else errno.errorcode.get(e.errno, str(e))


def serve_close(port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4096)
    print("ready", flush=True)
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            continue
        conn.close()


def _drain(sock) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def request(ip: str, port: int, count: int) -> dict:
    req = f"GET / HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n".encode()
    connect_us, request_us, errors, first = [], [], 0, None
    clock = time.perf_counter_ns
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(TIMEOUT)
        try:
            t0 = clock()
            sock.connect((ip, port))
            t1 = clock()
            sock.sendall(req)
            body = _drain(sock)
            t2 = clock()
            if not body.startswith(b"HTTP/1.0 200"):
                raise OSError(errno.EPROTO, "bad answer")
            connect_us.append((t1 - t0) / 1e3)
            request_us.append((t2 - t0) / 1e3)
        except OSError as e:
            errors += 1
            first = first or _error(e)
        finally:
            sock.close()
    return {"connect_us": connect_us, "request_us": request_us, "errors": errors, "first_error": first}


def connect(ip: str, port: int, count: int) -> dict:
    connect_us, errors, first = [], 0, None
    clock = time.perf_counter_ns
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(TIMEOUT)
        try:
            t0 = clock()
            sock.connect((ip, port))
            t1 = clock()
            _drain(sock)
            connect_us.append((t1 - t0) / 1e3)
        except OSError as e:
            errors += 1
            first = first or _error(e)
        finally:
            sock.close()
    return {"connect_us": connect_us, "errors": errors, "first_error": first}


def _rate_worker(ip: str, port: int, seconds: float, fd: int) -> None:
    done = errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock = socket.socket()
        sock.settimeout(TIMEOUT)
        try:
            sock.connect((ip, port))
            _drain(sock)
            done += 1
        except OSError:
            errors += 1
        finally:
            sock.close()
    os.write(fd, f"{done} {errors}\n".encode())


def rate(ip: str, port: int, seconds: float, procs: int) -> dict:
    r, w = os.pipe()
    started = time.monotonic()
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                _rate_worker(ip, port, seconds, w)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    elapsed = time.monotonic() - started
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    done = errors = 0
    for line in data.decode().split("\n"):
        if line:
            d, e = map(int, line.split())
            done, errors = done + d, errors + e
    return {"connections": done, "seconds": elapsed, "per_second": done / elapsed, "errors": errors,
            "procs": procs}


def main(argv: list[str]) -> int:
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "serve-close":
        serve_close(int(args[0]))
    elif cmd == "request":
        print(json.dumps(request(args[0], int(args[1]), int(args[2]))))
    elif cmd == "connect":
        print(json.dumps(connect(args[0], int(args[1]), int(args[2]))))
    elif cmd == "rate":
        print(json.dumps(rate(args[0], int(args[1]), float(args[2]), int(args[3]))))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
