"""KubeSource's reading of what the API gives beyond Services and EndpointSlices: the Node's addresses."""
from ebpflb.sources.kube import KubeSource
from tests.apiserver import FakeApiServer, node


def test_node_addresses_are_the_ipv4_internal_and_external_ones(tmp_path):
    """An address with a dot was taken as IPv4: "192.168.64.256" then stopped the agent (ValueError where
    NodePorts are planned). The client is only configured here: nothing connects."""
    source = KubeSource(FakeApiServer().write_kubeconfig(tmp_path / "kubeconfig"))
    odd = node("node-2", "192.168.64.6")
    odd["status"]["addresses"] += [{"type": "ExternalIP", "address": "203.0.113.6"},
                                   {"type": "ExternalIP", "address": "192.168.64.256"},
                                   {"type": "InternalIP", "address": "fd00::6"},
                                   {"type": "InternalIP", "address": ["10.0.0.6"]},
                                   {"type": "InternalIP", "address": "10.0.0.6\x00"},
                                   {"type": "InternalDNS", "address": "10.0.0.7"}, "10.0.0.8"]
    source.nodes = {"node-2": odd, "no-status": {"status": ["Ready"]}, "no-addresses": {"status": {"addresses": {}}}}
    assert source.node_addresses("node-2") == ["192.168.64.6", "203.0.113.6"]
    assert source.node_addresses("no-status") == source.node_addresses("no-addresses") == []
    assert source.node_addresses("elsewhere") == []
