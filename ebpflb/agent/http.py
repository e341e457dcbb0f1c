"""The agent's small HTTP listeners (metrics, kube-proxy's health port): one thread each, and a port
that is taken (kube-proxy still holds 10249 and 10256 while a node migrates) is tried again every few
seconds until it is free, as kube-proxy does with its own, instead of failing the agent."""
import errno
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

RETRY_S = 5.0


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT ("" or no host: every address). ValueError for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host or "0.0.0.0", int(port)


class Listener:
    """A ThreadingHTTPServer on `address`, now or as soon as the port is free."""

    def __init__(self, address: str, handler: type[BaseHTTPRequestHandler], what: str):
        self.address, self.handler, self.what = address, handler, what
        self.host, self.port = split_address(address)
        self.server: ThreadingHTTPServer | None = None
        self.stopped = threading.Event()
        if not self._bind():
            log.warning("%s: %s is in use (kube-proxy?); serving there as soon as it is free", what, address)
            threading.Thread(target=self._retry, name=f"listen-{self.port}", daemon=True).start()

    def _bind(self) -> bool:
        try:
            server = ThreadingHTTPServer((self.host, self.port), self.handler)
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            return False
        server.daemon_threads = True
        self.server = server
        threading.Thread(target=server.serve_forever, name=f"http-{self.port}", daemon=True).start()
        log.info("%s on http://%s/", self.what, self.address)
        return True

    def _retry(self) -> None:
        while not self.stopped.wait(RETRY_S):
            try:
                if self._bind():
                    return
            except OSError as err:
                log.error("%s: cannot listen on %s: %s", self.what, self.address, err)
                return

    def shutdown(self) -> None:
        self.stopped.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def reply(handler: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("X-Content-Type-Options", "nosniff")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
