"""Typed handles on ebpflb's pinned maps: keys and values are cffi structs from bpf/structs.h."""
import os
from dataclasses import dataclass

from ebpflb.datapath import libbpf
from ebpflb.datapath.libbpf import ffi as bpf_ffi, lib
from ebpflb.datapath.structs import LAYOUT_VERSION, ffi

BATCH = 4096


class MapsNotFound(RuntimeError):
    """No pinned maps where we looked: ebpflb has not run on this node (or another pin dir)."""


class LayoutMismatch(RuntimeError):
    def __init__(self, found: int, expected: int, pin_dir: str):
        super().__init__(
            f"maps in {pin_dir} have layout version {found}, this ebpflb reads version {expected}; "
            f"run the matching ebpflb, or `ebpflb cleanup --pin-dir {pin_dir}` to start afresh")
        self.found, self.expected = found, expected


class BpfMap:
    """One pinned map. `percpu` maps return a list of per-CPU values."""

    def __init__(self, path: str, key_type: str, value_type: str, percpu: bool = False):
        self.path = path
        self.key_type, self.value_type, self.percpu = key_type, value_type, percpu
        self.fd = libbpf.obj_get(path)
        info = libbpf.map_info(self.fd)
        self.max_entries = info.max_entries
        self.ncpus = libbpf.possible_cpus() if percpu else 1
        if info.key_size != ffi.sizeof(key_type) or info.value_size != ffi.sizeof(value_type):
            os.close(self.fd)
            raise LayoutMismatch(-1, LAYOUT_VERSION, os.path.dirname(path))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _value_buf(self, n: int = 1):
        return ffi.new(f"{self.value_type}[{n * self.ncpus}]")

    def lookup(self, key):
        """The value as a `struct X *` (a list of per-CPU structs for per-CPU maps), or None."""
        value = self._value_buf() if self.percpu else ffi.new(f"{self.value_type} *")
        ret = lib.bpf_map_lookup_elem(self.fd, key, value)
        if ret == -libbpf.ENOENT:
            return None
        libbpf.check(ret, f"lookup in {self.path}")
        return self._per_cpu(value, 0) if self.percpu else value

    def _per_cpu(self, values, start: int) -> list:
        """Owning copies: an element of a cffi array does not keep the array alive, and batch
        buffers are reused."""
        return [ffi.new(f"{self.value_type} *", values[start + c]) for c in range(self.ncpus)]

    def update(self, key, value, flags: int = libbpf.BPF_ANY) -> None:
        libbpf.check(lib.bpf_map_update_elem(self.fd, key, value, flags), f"update of {self.path}")

    def update_many(self, keys, values) -> None:
        """Write keys[i] -> values[i] for two cffi arrays of the map's key and value types: one
        batch syscall per BATCH entries instead of one each. Per-CPU maps take ncpus values a key."""
        if len(keys) * self.ncpus != len(values):
            raise ValueError(f"{len(keys)} keys, {len(values)} values")
        opts = bpf_ffi.new("struct bpf_map_batch_opts *", {"sz": bpf_ffi.sizeof("struct bpf_map_batch_opts")})
        count = bpf_ffi.new("__u32 *")
        for start in range(0, len(keys), BATCH):
            count[0] = min(BATCH, len(keys) - start)
            libbpf.check(lib.bpf_map_update_batch(self.fd, keys + start, values + start * self.ncpus, count, opts),
                         f"batch update of {self.path}")

    def delete_many(self, keys) -> int:
        """Delete keys[i] for a cffi array of the map's key type, one batch syscall per BATCH keys; a
        key that is not there is passed over. Returns how many were deleted."""
        opts = bpf_ffi.new("struct bpf_map_batch_opts *", {"sz": bpf_ffi.sizeof("struct bpf_map_batch_opts")})
        count = bpf_ffi.new("__u32 *")
        deleted = start = 0
        while start < len(keys):
            count[0] = min(BATCH, len(keys) - start)
            ret = lib.bpf_map_delete_batch(self.fd, keys + start, count, opts)
            deleted += count[0]
            if ret == -libbpf.ENOENT:   # keys[start + count] is not there: on past it
                start += count[0] + 1
                continue
            libbpf.check(ret, f"batch delete in {self.path}")
            start += count[0]
        return deleted

    def delete(self, key) -> bool:
        ret = lib.bpf_map_delete_elem(self.fd, key)
        if ret == -libbpf.ENOENT:
            return False
        libbpf.check(ret, f"delete in {self.path}")
        return True

    def _batches(self):
        """(keys, values, n) for each batch lookup over the whole map; the buffers are reused."""
        keys = ffi.new(f"{self.key_type}[{BATCH}]")
        values = self._value_buf(BATCH)
        # The kernel writes its position into token_out: a u32 bucket for hash maps, a whole key
        # for the others (arrays, generic batch ops), so the token must hold the larger.
        token_size = max(8, ffi.sizeof(self.key_type))
        token_in, token_out = ffi.new(f"char[{token_size}]"), ffi.new(f"char[{token_size}]")
        count = bpf_ffi.new("__u32 *")
        opts = bpf_ffi.new("struct bpf_map_batch_opts *", {"sz": bpf_ffi.sizeof("struct bpf_map_batch_opts")})
        first = True
        while True:
            count[0] = BATCH
            ret = lib.bpf_map_lookup_batch(self.fd, bpf_ffi.NULL if first else token_in, token_out,
                                           keys, values, count, opts)
            if ret < 0 and ret != -libbpf.ENOENT:
                libbpf.check(ret, f"batch lookup in {self.path}")
            yield keys, values, count[0]
            if ret == -libbpf.ENOENT:   # that was the last batch
                return
            ffi.memmove(token_in, token_out, token_size)
            first = False

    def items(self):
        """Every (key, value) as cffi structs (a list of per-CPU structs for per-CPU maps)."""
        out = []
        for keys, values, n in self._batches():
            for i in range(n):
                key = ffi.new(f"{self.key_type} *", keys[i])
                if self.percpu:
                    out.append((key, self._per_cpu(values, i * self.ncpus)))
                else:
                    out.append((key, ffi.new(f"{self.value_type} *", values[i])))
        return out

    def nonzero_u32(self) -> dict[int, int]:
        """{key: value} of an array map of __u32 keys and 4-byte values, the entries that are not 0,
        without a Python object per entry (affinity_svc: 131072 entries, nearly all 0)."""
        if ffi.sizeof(self.key_type) != 4 or ffi.sizeof(self.value_type) != 4 or self.percpu:
            raise TypeError(f"{self.path}: not a map of 4-byte keys and values")
        found = {}
        for keys, values, n in self._batches():
            key_words = memoryview(ffi.buffer(keys, 4 * n)).cast("I")
            value_words = memoryview(ffi.buffer(values, 4 * n)).cast("I")
            found.update((key_words[i], value) for i, value in enumerate(value_words) if value)
        return found

    def u64_words_below(self, end: int) -> memoryview:
        """The values of an array map's keys 0..end-1 as one run of u64 words (per-CPU maps: ncpus
        values a key, CPU by CPU), read in batches instead of a lookup per key, and without a
        Python object per value."""
        if self.key_type != "__u32" or ffi.sizeof(self.value_type) % 8:
            raise TypeError(f"{self.path}: not an array of u64 words")
        value_bytes = ffi.sizeof(self.value_type) * self.ncpus
        chunks, have = [], 0
        for _, values, n in self._batches():   # an array's batches go in key order
            n = min(n, end - have)
            chunks.append(ffi.buffer(values, value_bytes * n)[:])
            have += n
            if have >= end:
                break
        return memoryview(b"".join(chunks)).cast("Q")

    def count(self) -> int:
        """Number of entries, without building Python objects for them."""
        return sum(n for _, _, n in self._batches())

    def __len__(self) -> int:
        return self.count()


MAP_LAYOUT = {
    # pin name: (key type, value type, per-CPU)
    "nat_fe": ("struct nat_fe_key", "struct nat_fe_value", False),
    "nat_be": ("struct nat_be_key", "struct nat_be_value", False),
    "svc_ips": ("struct svc_ip_key", "struct svc_ip_value", False),
    "ct": ("struct ct_key", "struct ct_value", False),
    "svc_counters": ("__u32", "struct svc_counters", True),
    "drops": ("__u32", "struct drop_counters", True),
    "config": ("__u32", "struct config", False),
    "src_ranges": ("struct src_range_key", "__u32", False),
    "svc_addr_bits": ("__u32", "__u64", False),
    "affinity_svc": ("__u32", "struct affinity_svc", False),
    "affinity_be": ("struct affinity_be_key", "__u32", False),
    "affinity": ("struct affinity_key", "struct affinity_value", False),
    "sock_rev": ("struct sock_rev_key", "struct sock_rev_value", False),
    "sock_gone": ("struct sock_gone_key", "__u32", False),
    "icmp_bucket": ("__u32", "struct icmp_bucket", False),
}


@dataclass
class Maps:
    pin_dir: str
    nat_fe: BpfMap
    nat_be: BpfMap
    svc_ips: BpfMap
    ct: BpfMap
    svc_counters: BpfMap
    drops: BpfMap
    config: BpfMap
    src_ranges: BpfMap
    svc_addr_bits: BpfMap
    affinity_svc: BpfMap
    affinity_be: BpfMap
    affinity: BpfMap
    sock_rev: BpfMap
    sock_gone: BpfMap
    icmp_bucket: BpfMap

    @classmethod
    def open(cls, pin_dir: str, check_layout: bool = True) -> "Maps":
        if not os.path.exists(os.path.join(pin_dir, "config")):
            raise MapsNotFound(f"no ebpflb maps in {pin_dir}: ebpflb has not run on this node "
                               f"(or its maps are pinned elsewhere: --pin-dir)")
        if check_layout:
            found = read_layout_version(pin_dir)
            if found not in (0, LAYOUT_VERSION):
                raise LayoutMismatch(found, LAYOUT_VERSION, pin_dir)
        opened = {}
        try:
            for name, (ktype, vtype, percpu) in MAP_LAYOUT.items():
                opened[name] = BpfMap(os.path.join(pin_dir, name), ktype, vtype, percpu)
        except LayoutMismatch:
            for m in opened.values():
                m.close()
            raise LayoutMismatch(read_layout_version(pin_dir), LAYOUT_VERSION, pin_dir) from None
        except libbpf.BPFError as err:
            for m in opened.values():
                m.close()
            if err.errno != libbpf.ENOENT:
                raise
            raise MapsNotFound(f"incomplete ebpflb maps in {pin_dir} ({err}): an agent starting, "
                               f"or a half-removed pin dir") from None
        return cls(pin_dir, **opened)

    def close(self) -> None:
        for name in MAP_LAYOUT:
            getattr(self, name).close()

    def read_config(self):
        return self.config.lookup(ffi.new("__u32 *", 0))


def read_layout_version(pin_dir: str) -> int:
    """The first field of the config value is the layout version, in every layout."""
    fd = libbpf.obj_get(os.path.join(pin_dir, "config"))
    try:
        info = libbpf.map_info(fd)
        value = ffi.new(f"char[{info.value_size}]")
        libbpf.check(lib.bpf_map_lookup_elem(fd, ffi.new("__u32 *", 0), value), "config lookup")
        return ffi.cast("__u32 *", value)[0]
    finally:
        os.close(fd)
