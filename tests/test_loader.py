"""The loader compiles in a child process: the agent never holds bcc (LLVM, clang) in memory, gets
working program fds, and a compile error is a LoadError, not a hang or a leaked fd."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ebpflb.datapath import libbpf
from ebpflb.datapath.btf import skb_csum_facts
from ebpflb.datapath.loader import (BPF_CALL, BPF_PSEUDO_KFUNC_CALL, KFUNC_MARKER_CAST_TO_KERN_CTX, PROGRAMS, Datapath,
                           LoadError, compile_in_child, patch_kfunc_calls)


def test_the_loading_process_never_imports_bcc(pin_dir, tmp_path):
    """Also: the compiler process runs this very ebpflb, not one the working directory holds."""
    decoy = tmp_path / "ebpflb"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('the ebpflb of the working directory was imported')")
    script = ("import sys; from ebpflb.datapath import libbpf; from ebpflb.datapath.loader import Datapath\n"
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


def insn(code: int, regs: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return bytes((code, regs)) + off.to_bytes(2, "little", signed=True) + imm.to_bytes(4, "little", signed=True)


def test_only_calls_of_the_marker_become_kfunc_calls():
    marker, btf_id = KFUNC_MARKER_CAST_TO_KERN_CTX, 63566
    program = bytearray(b"".join([
        insn(BPF_CALL, imm=marker),                      # the marker: patched
        insn(BPF_CALL, imm=1),                           # bpf_map_lookup_elem: a helper, left alone
        insn(0x18, 0x01, imm=marker), insn(0, 0, imm=0),  # ld_imm64 r1 = marker: data, left alone
        insn(BPF_CALL, 0x10, imm=marker),                # a BPF-to-BPF call (src_reg 1): left alone
        insn(0x95)]))                                    # exit
    before = bytes(program)
    assert patch_kfunc_calls(program, {marker: btf_id}) == 1
    assert program[:8] == insn(BPF_CALL, BPF_PSEUDO_KFUNC_CALL << 4, imm=btf_id)
    assert program[8:] == before[8:]


def test_the_kernels_btf_places_ip_summed_and_the_programs_use_it(pin_dir):
    """This kernel (6.18, BTF) has what bpf/kernel.h needs, and the loaded programs call the kfunc."""
    facts = skb_csum_facts()
    assert facts is not None and facts.cast_to_kern_ctx_id > 0 and 0 <= facts.ip_summed_shift <= 6
    datapath = Datapath(pin_dir).load()
    try:
        info = libbpf.prog_info(datapath.fds["from_workload"])
        dump = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(info.id)], capture_output=True,
                              text=True, check=True).stdout
        # bpf_cast_to_kern_ctx() is inlined to a move; ip_summed is read at its offset.
        assert re.search(rf"= \*\(u8 \*\)\(r\d \+{facts.ip_summed_byte}\)", dump), dump[:3000]
        assert "unknown#" not in dump and str(KFUNC_MARKER_CAST_TO_KERN_CTX) not in dump
    finally:
        datapath.close()
