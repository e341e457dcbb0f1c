"""The running agent: its main loop over a source, the tracker, the writer and the datapath; its
metrics and health endpoints; healthCheckNodePort servers."""
