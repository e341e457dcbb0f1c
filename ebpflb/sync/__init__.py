"""From desired map contents (the core's output) to the pinned maps: diff and apply in an order no
packet can see half done. Uses datapath/ for the maps; never reads Kubernetes objects."""
