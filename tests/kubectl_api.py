"""The part of an API server that `kubectl apply --dry-run=client` talks to (tests/test_helm.py).

A client-side dry run still asks the server what it serves (discovery: /api, /apis and each
group-version's resources, to map a kind to its resource and scope) and GETs each object (404
here: every object is new). This serves exactly that, for the kinds the chart may render, in the
group-versions a current Kubernetes release serves (those kubernetes-validate has schemas for);
ServiceMonitor only when told the Prometheus Operator's CRDs are installed. No OpenAPI: kubectl's
own schema check needs the server's protobuf OpenAPI document, so the test runs it with
--validate=false and the schemas are kubernetes-validate's job.

    with KubectlApi(served) as api:
        kubeconfig = api.write_kubeconfig(path)
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# kind -> (plural, namespaced): what the chart renders or mounts.
RESOURCES = {"ServiceAccount": ("serviceaccounts", True), "Service": ("services", True),
             "ConfigMap": ("configmaps", True), "Secret": ("secrets", True),
             "DaemonSet": ("daemonsets", True), "ClusterRole": ("clusterroles", False),
             "ClusterRoleBinding": ("clusterrolebindings", False), "Role": ("roles", True),
             "RoleBinding": ("rolebindings", True), "ServiceMonitor": ("servicemonitors", True)}


class KubectlApi:
    def __init__(self, served: dict[str, list[str]]):
        """served: group-version ("v1", "apps/v1") -> kinds."""
        self.served = served
        self.requests: list[str] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "KubectlApi":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @staticmethod
    def plural(kind: str) -> str:
        return RESOURCES[kind][0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def write_kubeconfig(self, path) -> str:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": self.url}}],
            "users": [{"name": "t", "user": {"token": "t"}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t", "namespace": "kube-system"}}]}))
        return str(path)

    def answer(self, path: str) -> tuple[int, dict]:
        groups = {gv.split("/")[0]: gv for gv in self.served if "/" in gv}
        if path == "/version":
            return 200, {"major": "1", "minor": "37", "gitVersion": "v1.37.0"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                 "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}} for g, gv in groups.items()]}
        match = re.fullmatch(r"/api/(v1)|/apis/([^/]+/[^/]+)", path)
        if match:
            gv = match.group(1) or match.group(2)
            if gv not in self.served:
                return 404, _not_found(path)
            return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
                {"name": RESOURCES[k][0], "singularName": k.lower(), "namespaced": RESOURCES[k][1], "kind": k,
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                for k in self.served[gv]]}
        return 404, _not_found(path)      # every object is new; no OpenAPI documents


def _not_found(path: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound",
            "code": 404, "message": f"the server could not find the requested resource ({path})"}


def _handler(api: KubectlApi):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            api.requests.append(f"{self.command} {path}")
            code, body = api.answer(path) if self.command == "GET" else (405, _not_found(path))
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

    return Handler
