"""Real checkpoint sizes: a 5 GB BF16 tensor and a 2.5 GB I8 tensor (each over
the 2 GiB a single read returns on Linux) round-trip byte for byte through
the whole commands, each a process of its own whose peak RSS stays under
1 GB (floatzip streams inside tensors; it used to hold whole tensors)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PEAK_RSS_LIMIT = 1 << 30
BLOCK_VALUES = 1 << 24


def write_big(path, name, dtype, shape, block):
    """A one-tensor safetensors file; its data is ``block`` repeated, each
    copy made distinct (its low bits xor the copy's number), so that a
    misplaced or repeated block cannot go unseen."""
    count = int(np.prod(shape))
    itemsize = block.dtype.itemsize
    header = json.dumps({name: {"dtype": dtype, "shape": shape,
                                "data_offsets": [0, count * itemsize]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        for i, start in enumerate(range(0, count, block.size)):
            piece = block[:min(block.size, count - start)] ^ block.dtype.type(i & 0x3F)
            f.write(piece.tobytes())


# The child reports its own peak: the high-water mark of the memory it
# exec'd into (VmHWM). A forked child's getrusage peak would also count the
# pages of this pytest process, which may be large by the time it runs.
REPORT_PEAK = """
import atexit, sys
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("\\n" + line)
atexit.register(report)
from floatzip.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(*args):
    """Exit code, stderr and peak RSS (bytes) of ``floatzip ARGS`` in a
    process of its own."""
    proc = subprocess.run([sys.executable, "-c", REPORT_PEAK, *map(str, args)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err, _, peak = proc.stderr.rpartition("VmHWM:")
    return proc.returncode, err, int(peak.split()[0]) * 1024


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(64 << 20), fb.read(64 << 20)
            if x != y:
                return False
            if not x:
                return True


@pytest.mark.parametrize("dtype,shape", [("BF16", [625_000, 4000]), ("I8", [625_000, 4000])])
def test_tensor_over_2_gib_round_trips_in_bounded_memory(tmp_path, dtype, shape):
    rng = np.random.default_rng(5)
    if dtype == "BF16":
        normal = (rng.standard_normal(BLOCK_VALUES, dtype=np.float32) * 0.02)
        block = (normal.view(np.uint32) >> 16).astype(np.uint16)
    else:
        block = rng.integers(-128, 128, BLOCK_VALUES, dtype=np.int8).view(np.uint8)
    src, packed, restored = tmp_path / "big.safetensors", tmp_path / "big.fz", tmp_path / "out"
    write_big(src, "lm_head.weight", dtype, shape, block)
    assert os.path.getsize(src) > 2 ** 31
    try:
        for args in (("compress", "-q", src, packed), ("check", packed),
                     ("verify", src, packed), ("decompress", "-q", packed, restored)):
            code, err, peak = run(*args)
            assert code == 0, f"{args[0]}: {err}"
            assert peak < PEAK_RSS_LIMIT, f"{args[0]} peaked at {peak / 2**20:.0f} MiB"
        if dtype == "BF16":
            assert os.path.getsize(packed) < 0.7 * os.path.getsize(src)
        assert same_bytes(src, restored)
    finally:
        for path in (src, packed, restored):
            if os.path.exists(path):
                os.unlink(path)
