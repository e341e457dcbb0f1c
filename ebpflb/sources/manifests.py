"""Services and EndpointSlices from YAML/JSON files, reread when they change."""
import logging

from ebpflb.core.tracker import ServiceTracker
from ebpflb.gc_pause import gc_paused
from ebpflb.sources.manifest_files import ManifestError, fingerprint, load_manifests

log = logging.getLogger(__name__)


class ManifestSource:
    def __init__(self, path: str):
        self.path = path
        self.synced = False
        self.seen = None

    def start(self, tracker: ServiceTracker, lock, wake) -> None:
        self.tracker, self.lock = tracker, lock

    def poll(self) -> None:
        """Reread the files if they changed; a file that does not parse changes nothing."""
        try:
            current = fingerprint(self.path)
            if current == self.seen:
                return
            self.seen = current
            # One pause for reading and preparing, the API objects dropped before it ends: collection
            # resuming between the two went through all of them (0.1 s at 10k services).
            with gc_paused():
                services, slices = load_manifests(self.path)
                with self.lock:
                    self.tracker.replace_all(services, slices)   # pure: raises neither of the below
                del services, slices
        except (OSError, ManifestError) as err:
            log.error("cannot read manifests: %s; keeping what is programmed", err)
            return
        self.synced = True

    def stop(self) -> None:
        pass
