"""Every program loads on this kernel under each combination of compile-time options, and the
suite prints how much work each one gives the verifier (instructions processed, like Cilium's
complexity tests), so growth is seen at review. Also: a pinned map is never silently resized."""
import itertools

import pytest

from ebpflb.datapath import libbpf
from ebpflb.datapath.loader import PROGRAMS, Datapath, DatapathOptions, MapSizeMismatch

VERIFIER_LIMIT = 1_000_000          # the kernel's BPF_COMPLEXITY_LIMIT_INSNS
BUDGET = VERIFIER_LIMIT // 4        # ours: a program that needs more than this has grown too much
# --bpf-trace builds (a debug aid, never the default): each bpf_trace_printk() format is a string
# built on the stack, and the verifier prunes less across those bytes: from_uplink takes ~1.75x
# its plain build's work (144k plain, 252k traced, 2026-12-07; since issue 19's layout 8 it is three
# programs joined by tail calls, none above 51k either way). Their own budget, still far below the
# kernel's limit; the plain builds keep BUDGET.
TRACE_BUDGET = VERIFIER_LIMIT * 3 // 10
PROGRAM_NAMES = [name for programs in PROGRAMS.values() for name in programs]
OPTIONS = [DatapathOptions(reject_no_endpoints=reject, trace=trace, skb_csum_btf=btf)
           for reject, trace, btf in itertools.product((True, False), (False, True), (True, False))]


def label(options: DatapathOptions) -> str:
    return (f"{'reject' if options.reject_no_endpoints else 'drop'}{'+trace' if options.trace else ''}"
            f"{'' if options.skb_csum_btf else '+helpers'}")


@pytest.fixture(scope="module")
def table(figure):
    columns: dict[str, dict[str, tuple[int, int, int]]] = {}
    yield columns
    width = max(map(len, PROGRAM_NAMES))
    figure("verifier: instructions processed / program size in instructions / JITed bytes, per option set")
    figure(" " * width + "".join(f"  {name:>22}" for name in columns))
    for prog in PROGRAM_NAMES:
        figure(f"{prog:<{width}}" + "".join(f"  {'%d / %d / %d' % columns[c][prog]:>22}" for c in columns))


@pytest.mark.parametrize("options", OPTIONS, ids=label)
def test_every_program_loads_within_budget(options, pin_dir, table):
    datapath = Datapath(pin_dir, options)
    try:
        datapath.load()
        column = table[label(options)] = {}
        for name in PROGRAM_NAMES:
            info = libbpf.prog_info(datapath.fds[name])
            column[name] = (info.verified_insns, info.xlated_prog_len // 8, info.jited_prog_len)
            assert 0 < info.verified_insns <= (TRACE_BUDGET if options.trace else BUDGET), (name, info.verified_insns)
            assert info.jited_prog_len > 0, f"{name} is not JITed"
    finally:
        datapath.close()


def test_a_pinned_map_of_another_size_is_refused_with_a_clear_error(pin_dir):
    first = Datapath(pin_dir, DatapathOptions(ct_map_max=4096)).load()
    first.close()
    with pytest.raises(MapSizeMismatch, match=r"pinned map ct .* holds 4096 entries, the options ask for 8192"):
        Datapath(pin_dir, DatapathOptions(ct_map_max=8192)).load()
    again = Datapath(pin_dir, DatapathOptions(ct_map_max=4096)).load()   # the same size is fine
    assert again.maps.ct.max_entries == 4096
    again.close()
