"""Synthetic clusters: N services with E ready endpoints each, as the API serves them."""


def service_ip(i: int) -> str:
    return f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def cluster(services: int = 10_000, endpoints: int = 10, nodes: int = 3):
    svcs, slices = [], []
    for i in range(services):
        ip = service_ip(i)
        svcs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"namespace": "bench", "name": f"svc-{i}"},
                     "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                              "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})
        slices.append(endpoint_slice(i, endpoints, nodes))
    return svcs, slices


def endpoint_slice(i: int, endpoints: int = 10, nodes: int = 3, not_ready: int = -1):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": "bench", "name": f"svc-{i}-x",
                         "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"10.{128 + j}.{(i // 256) % 256}.{i % 256}"],
                           "conditions": {"ready": j != not_ready}, "nodeName": f"node-{j % nodes}"}
                          for j in range(endpoints)]}
