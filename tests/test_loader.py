"""The loader compiles in a child process: the agent never holds bcc (LLVM, clang) in memory, gets
working program fds, and a compile error is a LoadError, not a hang or a leaked fd."""
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ebpflb import libbpf
from ebpflb.loader import PROGRAMS, LoadError, compile_in_child


@pytest.fixture
def pin_dir():
    path = f"/sys/fs/bpf/ebpflb-test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_loading_process_never_imports_bcc(pin_dir, tmp_path):
    """Also: the compiler process runs this very ebpflb, not one the working directory holds."""
    decoy = tmp_path / "ebpflb"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('the ebpflb of the working directory was imported')")
    script = ("import sys; from ebpflb import libbpf; from ebpflb.loader import Datapath\n"
              f"dp = Datapath({pin_dir!r}).load()\n"
              "assert all(libbpf.prog_info(fd).jited_prog_len > 0 for fd in dp.fds.values())\n"
              "assert 'bcc' not in sys.modules, 'bcc was imported'\n"
              "print(sorted(dp.fds)); dp.close()")
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(sorted(name for programs in PROGRAMS.values() for name in programs))


def test_a_compile_error_is_a_load_error_and_leaks_no_fd(pin_dir):
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(LoadError, match="Failed to compile"):
        compile_in_child([f'-DPIN_DIR="{pin_dir}"', "-DCT_MAP_MAX=not_a_number"])
    assert set(os.listdir("/proc/self/fd")) == before


def test_each_program_fd_is_the_named_program(pin_dir):
    fds = compile_in_child([f'-DPIN_DIR="{pin_dir}"'])
    try:
        for name, fd in fds.items():
            assert libbpf.prog_name(libbpf.prog_info(fd).id) == name[:15]
    finally:
        for fd in fds.values():
            os.close(fd)
