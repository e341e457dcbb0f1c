import gc
import threading

from ebpflb.gc_pause import gc_paused


def test_collection_resumes_when_the_last_job_ends():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_job_in_another_thread_keeps_it_paused():
    entered, release = threading.Event(), threading.Event()

    def job():
        with gc_paused():
            entered.set()
            release.wait(5)

    worker = threading.Thread(target=job)
    worker.start()
    entered.wait(5)
    with gc_paused():
        pass
    assert not gc.isenabled()   # the other job still runs
    release.set()
    worker.join()
    assert gc.isenabled()


def test_left_disabled_when_it_was_disabled():
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_error_ends_the_job():
    try:
        with gc_paused():
            raise ValueError
    except ValueError:
        pass
    assert gc.isenabled()
