"""What the benchmark modules share: statistics, results.json, the machine, the tools they need."""
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.json"
PLOTS = REPO / "bench" / "plots"
PY = ".venv/bin/python"


@contextlib.contextmanager
def pinned_to_one_cpu():
    """Run the block on the highest-numbered CPU allowed. BPF_PROG_TEST_RUN runs on the calling
    CPU; a process the scheduler moves between CPUs measures their difference (on this 2-core VM
    the parse-only baseline takes 39 ns on one CPU and 39-55 ns on the other, which takes more
    interrupts), not the program's. Yields the CPU's number."""
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, allowed)


def spread(values) -> dict:
    """Median and min-max of repeated measurements (each run one value)."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values), "values": values}


def percentile(values, p: float) -> float:
    """Nearest-rank percentile of a sample."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))]


def load_results() -> dict:
    try:
        return json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        return {}


def save_results(key: str, value) -> None:
    """Merge one section into bench/results.json (the others stay as they are)."""
    merged = load_results()
    merged[key] = value
    merged.setdefault("meta", {}).update(machine())
    merged["meta"].setdefault("sections", {})[key] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model,
            "memory_gib": round(mem_gib, 1), "python": platform.python_version()}


def ensure_apt_tool(binary: str, package: str) -> str:
    """The path of binary; installs the Debian package first when missing (and says so)."""
    found = shutil.which(binary)
    if found:
        return found
    print(f"bench: {binary} is missing: apt-get install -y {package}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, check=True, capture_output=True)
    found = shutil.which(binary)
    if not found:
        raise RuntimeError(f"{binary} still missing after installing {package}")
    return found


def ensure_matplotlib():
    """matplotlib (Agg), pip-installed into this venv when missing (and says so)."""
    try:
        import matplotlib
    except ImportError:
        print(f"bench: matplotlib is missing: {sys.executable} -m pip install matplotlib", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


class Stopwatch:
    def __init__(self):
        self.started = time.monotonic()

    def __str__(self) -> str:
        return f"{time.monotonic() - self.started:.1f} s"
