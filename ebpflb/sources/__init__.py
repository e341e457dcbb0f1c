"""Where Services and EndpointSlices come from: manifests on disk, or the Kubernetes API. Both
feed the same ServiceTracker; the agent syncs when a source has said everything once (synced)."""
