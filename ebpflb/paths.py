"""Where ebpflb's files live on disk."""
import os
from pathlib import Path

BPF_DIR = Path(os.environ.get("EBPFLB_BPF_DIR", Path(__file__).resolve().parent.parent / "bpf"))
DEFAULT_PIN_DIR = "/sys/fs/bpf/ebpflb"
