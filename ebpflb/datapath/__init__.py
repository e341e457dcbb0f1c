"""The kernel side: the map structs shared with C (structs.h through cffi), libbpf through cffi, bcc's
compile and load, attaching programs with pyroute2, typed pinned maps, and conntrack upkeep. Knows
nothing of Kubernetes."""
