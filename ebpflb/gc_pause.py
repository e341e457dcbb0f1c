"""Python's cyclic GC kept out of bulk work (a cold start, a relist, a reread of the manifests).

Such work makes hundreds of thousands of objects that all stay: each collection it triggers finds
no garbage, and the full ones rescan everything made so far. Reference counting still frees what
is dropped. Reentrant and shared between threads (gc.disable() is process-wide): collection resumes
when the last bulk job ends.
"""
import gc
import threading
from contextlib import contextmanager

_lock = threading.Lock()
_jobs = 0
_was_enabled = False


@contextmanager
def gc_paused():
    global _jobs, _was_enabled
    with _lock:
        if _jobs == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _jobs += 1
    try:
        yield
    finally:
        with _lock:
            _jobs -= 1
            if _jobs == 0 and _was_enabled:
                gc.enable()
