"""Run the programs on both CPUs at once: one forked process pinned to each CPU (a test run runs on
the CPU of its caller), started together, optionally kept in lockstep.

    def work(cpu, lockstep):             # in the child pinned to `cpu`
        for i in range(n):
            lockstep()                   # returns once every child has called it as often
            ...prog_test_run(...)...
        return result                    # anything picklable
    results = on_all_cpus(work)          # [result of CPU 0, result of CPU 1, ...]

Processes, not threads: the children never wait on each other's GIL, so their test runs really
overlap. They inherit the parent's program and map fds.
"""
import multiprocessing
import os
import traceback


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def on_all_cpus(work, timeout: float = 300) -> list:
    ctx = multiprocessing.get_context("fork")
    which = cpus()
    calls = ctx.Array("q", len(which), lock=False)   # lockstep calls per child, in shared memory
    start = ctx.Barrier(len(which))
    results = ctx.Queue()

    def child(index: int, cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})

        def lockstep() -> None:
            calls[index] += 1
            mine = calls[index]
            while any(calls[other] < mine for other in range(len(which))):
                pass

        try:
            start.wait(timeout)
            results.put((index, "ok", work(cpu, lockstep)))
        except BaseException:
            calls[index] = 1 << 62   # never hold the others in lockstep
            results.put((index, "error", traceback.format_exc()))

    procs = [ctx.Process(target=child, args=(i, cpu), daemon=True) for i, cpu in enumerate(which)]
    for proc in procs:
        proc.start()
    try:
        got = dict((index, (status, value)) for index, status, value in
                   (results.get(timeout=timeout) for _ in procs))
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    errors = [value for status, value in got.values() if status == "error"]
    if errors:
        raise AssertionError("a worker failed:\n" + "\n".join(errors))
    return [got[i][1] for i in range(len(which))]
