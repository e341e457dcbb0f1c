"""ebpflb: an eBPF service load-balancer data plane for Kubernetes."""
