"""The host-socket programs (bpf/sock.c) on a cgroup v2 directory, as bpf links pinned beside the
maps (<pin dir>/cgroup_links/<program>): they outlive the agent, and a restart finds them.

A link joins the cgroup's program list the way a BPF_F_ALLOW_MULTI attachment does: programs
others attached there keep running. A restart swaps its new programs into the pinned links
(bpf_link_update: one atomic step per hook, never a moment without translation, never a second
copy). Links of ours that lost their pin (an agent still running while its pin dir was removed)
are found by cgroup, hook, program name and pinned maps, and detached. `ebpflb cleanup` detaches
everything.

The default cgroup is the host's cgroup v2 root as /proc/mounts gives it (/sys/fs/cgroup on a
unified host, /sys/fs/cgroup/unified on a hybrid one), or one mounted under /run/ebpflb when none
is. Processes in kubepods cgroups (hostNetwork pods) are under it, so the root covers them.
"""
import contextlib
import errno
import logging
import os
import subprocess
from pathlib import Path

from ebpflb.datapath import libbpf

log = logging.getLogger(__name__)

# program -> the kernel's attach type (enum bpf_attach_type)
SOCK_HOOKS = {
    "sock_connect4": 10,    # BPF_CGROUP_INET4_CONNECT
    "sock_sendmsg4": 14,    # BPF_CGROUP_UDP4_SENDMSG
    "sock_recvmsg4": 19,    # BPF_CGROUP_UDP4_RECVMSG
    "sock_peername4": 29,   # BPF_CGROUP_INET4_GETPEERNAME
    "sock_connect6": 11,    # BPF_CGROUP_INET6_CONNECT     (IPv6 sockets reaching IPv4 services)
    "sock_sendmsg6": 15,    # BPF_CGROUP_UDP6_SENDMSG
    "sock_recvmsg6": 20,    # BPF_CGROUP_UDP6_RECVMSG
    "sock_peername6": 30,   # BPF_CGROUP_INET6_GETPEERNAME
}
LINK_DIR = "cgroup_links"
OWN_MOUNT = "/run/ebpflb/cgroupv2"
PREFERRED_MOUNTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", OWN_MOUNT)


class CgroupError(RuntimeError):
    pass


def cgroup2_mounts(mounts: str = "/proc/self/mounts") -> list[str]:
    """Mount points of cgroup v2, preferred ones first."""
    with open(mounts) as f:
        found = [fields[1] for fields in (line.split() for line in f) if len(fields) > 2 and fields[2] == "cgroup2"]
    return sorted(dict.fromkeys(found), key=lambda m: PREFERRED_MOUNTS.index(m) if m in PREFERRED_MOUNTS else 99)


def default_cgroup_root(mount: bool = True) -> str | None:
    """The host's cgroup v2 root; with `mount`, one is mounted at OWN_MOUNT when none is."""
    mounted = cgroup2_mounts()
    if mounted or not mount:
        return mounted[0] if mounted else None
    os.makedirs(OWN_MOUNT, exist_ok=True)
    result = subprocess.run(["mount", "-t", "cgroup2", "none", OWN_MOUNT], capture_output=True, text=True)
    if result.returncode != 0:
        raise CgroupError(f"no cgroup v2 is mounted and mounting one at {OWN_MOUNT} failed: {result.stderr.strip()}")
    log.info("no cgroup v2 was mounted: mounted one at %s", OWN_MOUNT)
    return OWN_MOUNT


def is_cgroup2(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "cgroup.controllers"))


def resolve_cgroup_root(path: str | None) -> str:
    """--cgroup-root: a cgroup v2 directory (the root or any cgroup below it), or a hybrid host's
    /sys/fs/cgroup, whose v2 part is unified/; None: the default."""
    if path is None:
        return default_cgroup_root()
    if is_cgroup2(path):
        return os.path.abspath(path)
    if is_cgroup2(os.path.join(path, "unified")):
        return os.path.abspath(os.path.join(path, "unified"))
    raise CgroupError(f"{path} is not a cgroup v2 directory (no cgroup.controllers in it or in {path}/unified)")


def cgroup_id(path: str) -> int:
    """A cgroup's id, as bpf link info reports it: its kernfs inode number."""
    return os.stat(path).st_ino


def _config_map_id(pin_dir: str) -> int | None:
    try:
        fd = libbpf.obj_get(os.path.join(pin_dir, "config"))
    except libbpf.BPFError:
        return None
    try:
        return libbpf.map_info(fd).id
    finally:
        os.close(fd)


def _ours(prog_id: int, program: str, config_map: int | None) -> bool:
    """Is this program `program` (a loaded program's name is its first 15 characters), and, when
    known, one using our pinned maps?"""
    try:
        fd = libbpf.prog_fd_by_id(prog_id)
    except libbpf.BPFError:
        return False   # gone meanwhile
    try:
        info = libbpf.prog_info(fd)
        name = libbpf.ffi.string(info.name).decode()
        return name == program[:15] and (config_map is None or config_map in libbpf.prog_map_ids(fd))
    finally:
        os.close(fd)


def _links_on(cgroup: int, config_map: int | None):
    """(link fd, program) of every link of ours on the cgroup with that id; the caller closes the fds."""
    by_type = {t: name for name, t in SOCK_HOOKS.items()}
    for link_id in list(libbpf.link_ids()):
        try:
            fd = libbpf.link_fd_by_id(link_id)
        except libbpf.BPFError:
            continue
        info = libbpf.link_info(fd)
        program = by_type.get(info.attach_type)
        if info.type == libbpf.BPF_LINK_TYPE_CGROUP and info.cgroup_id == cgroup and program and \
                _ours(info.prog_id, program, config_map):
            yield fd, program
        else:
            os.close(fd)


def _detach(fd: int) -> None:
    try:
        libbpf.link_detach(fd)
    except libbpf.BPFError as err:
        if err.errno != errno.ENOLINK:   # already detached (its cgroup went)
            raise
    finally:
        os.close(fd)


def attach(fds: dict[str, int], pin_dir: str, cgroup: str) -> dict[str, str]:
    """Put the host-socket programs on `cgroup`; what happened to each: "attached", or "replaced"
    (a pinned link from before now runs the new program)."""
    links = Path(pin_dir, LINK_DIR)
    links.mkdir(exist_ok=True)
    target, config_map = cgroup_id(cgroup), _config_map_id(pin_dir)
    done = {}
    for program, attach_type in SOCK_HOOKS.items():
        pin = links / program
        kept = None
        if pin.exists():
            fd = libbpf.obj_get(str(pin))
            info = libbpf.link_info(fd)
            if info.type == libbpf.BPF_LINK_TYPE_CGROUP and info.cgroup_id == target and info.attach_type == attach_type:
                libbpf.link_update(fd, fds[program])
                kept = info.id
                os.close(fd)
            else:   # another cgroup (--cgroup-root changed), or its cgroup went
                _detach(fd)
                pin.unlink()
        for fd, name in list(_links_on(target, config_map)):
            if name != program or libbpf.link_info(fd).id == kept:
                os.close(fd)
                continue
            log.warning("detaching a second %s link on %s (its pin was lost)", program, cgroup)
            _detach(fd)
        if kept is None:
            try:
                with _opened(cgroup) as cgroup_fd:
                    fd = libbpf.link_create(fds[program], cgroup_fd, attach_type)
            except libbpf.BPFError as err:
                raise CgroupError(f"attaching {program} to {cgroup} failed: {err}"
                                  + (" (a program there was attached without BPF_F_ALLOW_MULTI)"
                                     if err.errno == errno.EPERM else "")) from None
            try:
                libbpf.obj_pin(fd, str(pin))
            finally:
                os.close(fd)
        done[program] = "attached" if kept is None else "replaced"
    return done


def detach(pin_dir: str, cgroup: str | None, by_name: bool = False) -> int:
    """Detach the pinned links, and every other link of ours on `cgroup`: those using the pin dir's
    maps, or, with `by_name` (a cgroup named on purpose) and no maps left to tell, every link whose
    program has one of our names. How many were detached."""
    detached = 0
    links = Path(pin_dir, LINK_DIR)
    config_map = _config_map_id(pin_dir)
    if links.is_dir():
        for pin in sorted(links.iterdir()):
            try:
                _detach(libbpf.obj_get(str(pin)))
                detached += 1
            except libbpf.BPFError as err:
                log.warning("%s: %s", pin, err)
            pin.unlink()
        links.rmdir()
    if cgroup is not None and os.path.isdir(cgroup) and (config_map is not None or by_name):
        for fd, _ in list(_links_on(cgroup_id(cgroup), config_map)):
            _detach(fd)
            detached += 1
    return detached


def attached_programs(cgroup: str) -> dict[str, list[str]]:
    """Hook -> names of the programs attached to the cgroup there (ours and others')."""
    out = {}
    with _opened(cgroup) as fd:
        for program, attach_type in SOCK_HOOKS.items():
            names = []
            for prog_id in libbpf.prog_query(fd, attach_type):
                try:
                    names.append(libbpf.prog_name(prog_id))
                except libbpf.BPFError:
                    continue
            out[program] = names
    return out


@contextlib.contextmanager
def _opened(path: str):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)
