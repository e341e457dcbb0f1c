"""healthCheckNodePort, as kube-proxy serves it for externalTrafficPolicy Local services: load
balancers ask every node and skip those without a local endpoint (200 with a count, or 503)."""
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


class HealthCheckServers:
    """One HTTP listener per healthCheckNodePort; `update` is called with each sync's wanted set."""

    def __init__(self, bind_addr: str = "0.0.0.0"):
        self.bind_addr = bind_addr
        self.servers: dict[int, ThreadingHTTPServer] = {}
        self.answers: dict[int, object] = {}   # port -> HealthCheck (namespace, name, local_endpoints)

    def update(self, wanted: dict) -> None:
        self.answers = dict(wanted)
        for port in self.servers.keys() - wanted.keys():
            self.servers.pop(port).shutdown()
        for port in wanted.keys() - self.servers.keys():
            try:
                self.servers[port] = self._serve(port)
            except OSError as err:
                log.error("healthCheckNodePort %d: cannot listen: %s", port, err)

    def _serve(self, port: int) -> ThreadingHTTPServer:
        answers = self.answers_for

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                check = answers(port)   # None: the service left between update and request
                local = check.local_endpoints if check else 0
                body = json.dumps({"service": {"namespace": check.namespace if check else "",
                                               "name": check.name if check else ""},
                                   "localEndpoints": local}).encode()
                self.send_response(200 if local > 0 else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer((self.bind_addr, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name=f"healthcheck-{port}", daemon=True).start()
        return server

    def answers_for(self, port: int):
        return self.answers.get(port)

    def close(self) -> None:
        self.update({})
