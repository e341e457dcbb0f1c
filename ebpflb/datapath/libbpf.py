"""libbpf (Debian's libbpf.so.1, which libbcc links) through cffi, for what bcc's Python lacks:
opening pinned maps, batch map operations, BPF_PROG_TEST_RUN, object info, the kernel's BTF."""
import errno
import os

from cffi import FFI

ffi = FFI()
ffi.cdef("""
typedef uint8_t __u8; typedef uint32_t __u32; typedef uint64_t __u64;
struct bpf_map_batch_opts { size_t sz; __u64 elem_flags; __u64 flags; };
struct bpf_test_run_opts {
    size_t sz; const void *data_in; void *data_out; __u32 data_size_in; __u32 data_size_out;
    const void *ctx_in; void *ctx_out; __u32 ctx_size_in; __u32 ctx_size_out;
    __u32 retval; int repeat; __u32 duration; __u32 flags; __u32 cpu; __u32 batch_size;
};
/* The leading fields of the kernel's struct bpf_map_info; the kernel fills what fits. */
struct bpf_map_info_head {
    __u32 type; __u32 id; __u32 key_size; __u32 value_size; __u32 max_entries; __u32 map_flags;
    char name[16];
};
int bpf_obj_get(const char *pathname);
int bpf_obj_pin(int fd, const char *pathname);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         __u32 *count, const struct bpf_map_batch_opts *opts);
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_delete_batch(int fd, const void *keys, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);
int bpf_prog_get_fd_by_id(__u32 id);
/* The leading fields of the kernel's struct bpf_prog_info, up to verified_insns (5.16). */
struct bpf_prog_info_head {
    __u32 type; __u32 id; __u8 tag[8]; __u32 jited_prog_len; __u32 xlated_prog_len;
    __u64 jited_prog_insns; __u64 xlated_prog_insns; __u64 load_time; __u32 created_by_uid;
    __u32 nr_map_ids; __u64 map_ids; char name[16];
    __u32 ifindex; __u32 gpl_compatible; __u64 netns_dev; __u64 netns_ino;
    __u32 nr_jited_ksyms; __u32 nr_jited_func_lens; __u64 jited_ksyms; __u64 jited_func_lens;
    __u32 btf_id; __u32 func_info_rec_size; __u64 func_info; __u32 nr_func_info; __u32 nr_line_info;
    __u64 line_info; __u64 jited_line_info; __u32 nr_jited_line_info; __u32 line_info_rec_size;
    __u32 jited_line_info_rec_size; __u32 nr_prog_tags; __u64 prog_tags; __u64 run_time_ns;
    __u64 run_cnt; __u64 recursion_misses; __u32 verified_insns;
};
int libbpf_num_possible_cpus(void);
/* bpf links (cgroup hooks, iterators) */
int bpf_link_create(int prog_fd, int target_fd, int attach_type, const void *opts);
int bpf_link_update(int link_fd, int new_prog_fd, const void *opts);
int bpf_link_detach(int link_fd);
int bpf_link_get_next_id(__u32 start_id, __u32 *next_id);
int bpf_link_get_fd_by_id(__u32 id);
int bpf_iter_create(int link_fd);
int bpf_prog_query(int target_fd, int type, __u32 query_flags, __u32 *attach_flags, __u32 *prog_ids,
                   __u32 *prog_cnt);
/* The leading fields of the kernel's struct bpf_link_info, with its union as a cgroup link's. */
struct bpf_link_info_cgroup {
    __u32 type; __u32 id; __u32 prog_id; __u32 pad; __u64 cgroup_id; __u32 attach_type; __u32 pad2;
};
/* BTF of the running kernel (ebpflb/datapath/btf.py reads a few facts from it). */
struct btf;
struct btf_type { __u32 name_off; __u32 info; __u32 size_or_type; };
struct btf_member { __u32 name_off; __u32 type; __u32 offset; };
struct btf *btf__load_vmlinux_btf(void);
int btf__find_by_name_kind(const struct btf *btf, const char *type_name, __u32 kind);
const struct btf_type *btf__type_by_id(const struct btf *btf, __u32 id);
const char *btf__name_by_offset(const struct btf *btf, __u32 offset);
void btf__free(struct btf *btf);
""")
lib = ffi.dlopen("libbpf.so.1")

BPF_ANY = 0
BPF_NOEXIST = 1


class BPFError(OSError):
    pass


def check(ret: int, what: str) -> int:
    """libbpf 1.x returns -errno; turn that into an exception that names the call."""
    if ret < 0:
        code = -ret
        raise BPFError(code, f"{what}: {os.strerror(code)}")
    return ret


def obj_get(path: str) -> int:
    return check(lib.bpf_obj_get(path.encode()), f"bpf_obj_get({path})")


def obj_pin(fd: int, path: str) -> None:
    check(lib.bpf_obj_pin(fd, path.encode()), f"bpf_obj_pin({path})")


def map_info(fd: int):
    info = ffi.new("struct bpf_map_info_head *")
    size = ffi.new("__u32 *", ffi.sizeof(info[0]))
    check(lib.bpf_obj_get_info_by_fd(fd, info, size), "bpf_obj_get_info_by_fd")
    return info


def prog_info(fd: int):
    """What the kernel says of a loaded program: name, xlated/jited length, verified_insns."""
    info = ffi.new("struct bpf_prog_info_head *")
    size = ffi.new("__u32 *", ffi.sizeof(info[0]))
    check(lib.bpf_obj_get_info_by_fd(fd, info, size), "bpf_obj_get_info_by_fd")
    return info


def prog_name(prog_id: int) -> str:
    """The name a loaded program was given (how cleanup recognises ebpflb's XDP programs)."""
    fd = check(lib.bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id({prog_id})")
    try:
        return ffi.string(prog_info(fd).name).decode()
    finally:
        os.close(fd)


def prog_map_ids(fd: int) -> list[int]:
    """Ids of the maps a loaded program uses."""
    count = prog_info(fd).nr_map_ids
    ids = ffi.new("__u32[]", max(count, 1))
    info = ffi.new("struct bpf_prog_info_head *", {"nr_map_ids": count, "map_ids": int(ffi.cast("uintptr_t", ids))})
    size = ffi.new("__u32 *", ffi.sizeof(info[0]))
    check(lib.bpf_obj_get_info_by_fd(fd, info, size), "bpf_obj_get_info_by_fd")
    return list(ids[0:min(count, info.nr_map_ids)])


BPF_LINK_TYPE_CGROUP = 3


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    return check(lib.bpf_link_create(prog_fd, target_fd, attach_type, ffi.NULL), "bpf_link_create")


def link_update(link_fd: int, prog_fd: int) -> None:
    check(lib.bpf_link_update(link_fd, prog_fd, ffi.NULL), "bpf_link_update")


def link_detach(link_fd: int) -> None:
    check(lib.bpf_link_detach(link_fd), "bpf_link_detach")


def link_info(fd: int):
    """type, id, prog_id, and for a cgroup link cgroup_id and attach_type."""
    info = ffi.new("struct bpf_link_info_cgroup *")
    size = ffi.new("__u32 *", ffi.sizeof(info[0]))
    check(lib.bpf_obj_get_info_by_fd(fd, info, size), "bpf_obj_get_info_by_fd (link)")
    return info


def link_ids():
    """Ids of every bpf link in the system."""
    current, following = 0, ffi.new("__u32 *")
    while lib.bpf_link_get_next_id(current, following) == 0:
        current = following[0]
        yield current


def link_fd_by_id(link_id: int) -> int:
    return check(lib.bpf_link_get_fd_by_id(link_id), f"bpf_link_get_fd_by_id({link_id})")


def prog_fd_by_id(prog_id: int) -> int:
    return check(lib.bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id({prog_id})")


def iter_create(link_fd: int) -> int:
    return check(lib.bpf_iter_create(link_fd), "bpf_iter_create")


def prog_query(target_fd: int, attach_type: int, most: int = 64) -> list[int]:
    """Ids of the programs attached to target_fd (a cgroup) at attach_type, links' included."""
    ids, count = ffi.new("__u32[]", most), ffi.new("__u32 *", most)
    check(lib.bpf_prog_query(target_fd, attach_type, 0, ffi.NULL, ids, count), "bpf_prog_query")
    return list(ids[0:count[0]])


def possible_cpus() -> int:
    return check(lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


ENOENT = errno.ENOENT


def _test_run_opts(packet: bytes, repeat: int):
    """BPF_PROG_TEST_RUN's options with `packet` as input; the input buffer is returned too, as
    the options only point at it and it must outlive the call."""
    opts = ffi.new("struct bpf_test_run_opts *")
    opts.sz = ffi.sizeof("struct bpf_test_run_opts")
    data_in = ffi.from_buffer(packet)
    opts.data_in = data_in
    opts.data_size_in = len(packet)
    opts.repeat = repeat
    return opts, data_in


def _xdp_md(packet: bytes, ingress_ifindex: int):
    # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    return ffi.new("__u32[6]", [0, len(packet), 0, ingress_ifindex, 0, 0])


def prog_test_run(prog_fd: int, packet: bytes, repeat: int = 1, ifindex: int = 0, xdp: bool = False):
    """Run a tc (or, with xdp=True, an XDP) program on `packet` with BPF_PROG_TEST_RUN.

    Returns (retval, packet_out, avg_ns_per_run). `ifindex` sets skb->ifindex, or the XDP
    ingress_ifindex (a device of the calling thread's namespace; 0: the kernel's default).
    """
    out = ffi.new("char[]", max(len(packet) + 512, 256))
    opts, data_in = _test_run_opts(packet, repeat)
    opts.data_out = out
    opts.data_size_out = len(out)
    ctx = None
    if xdp and ifindex:
        ctx = _xdp_md(packet, ifindex)
        opts.ctx_in = ctx
        opts.ctx_size_in = ffi.sizeof(ctx)
    elif ifindex:
        # struct __sk_buff: ifindex is the 10th __u32 (offset 40); the kernel takes the rest as 0.
        ctx = ffi.new("__u32[48]")
        ctx[10] = ifindex
        opts.ctx_in = ctx
        opts.ctx_size_in = ffi.sizeof(ctx)
    check(lib.bpf_prog_test_run_opts(prog_fd, opts), "bpf_prog_test_run_opts")
    return opts.retval, ffi.buffer(out, opts.data_size_out)[:], opts.duration


BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


def xdp_live_frames(prog_fd: int, frame: bytes, count: int, ingress_ifindex: int, batch_size: int = 64) -> None:
    """Run an XDP program `count` times in live-frames mode (kernel >= 5.18, the kernel's XDP traffic
    generator): each run gets a fresh frame holding `frame`, and what the program redirects or sends is
    really transmitted (as from a driver's receive ring). The calling thread's namespace must hold
    `ingress_ifindex`."""
    opts, data_in = _test_run_opts(frame, count)
    opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES
    opts.batch_size = batch_size
    ctx = _xdp_md(frame, ingress_ifindex)
    opts.ctx_in = ctx
    opts.ctx_size_in = ffi.sizeof(ctx)
    check(lib.bpf_prog_test_run_opts(prog_fd, opts), "bpf_prog_test_run_opts (XDP live frames)")
