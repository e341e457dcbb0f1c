"""The pure core: Kubernetes objects in, desired map contents out. No I/O here."""
