"""compress and decompress stream tensor by tensor: their peak memory stays
near the largest tensor, not the size of the checkpoint."""
import json
import subprocess
import sys

import numpy as np
from conftest import bf16_bits, write_safetensors

SCRIPT = """
import json, resource, sys
import floatzip
src, packed, restored, small = sys.argv[1:5]
floatzip.compress(small, small + ".fz", workers=1)      # warm up: JIT cache, imports
floatzip.decompress(small + ".fz", small + ".out", workers=1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
floatzip.compress(src, packed, workers=1)
after_compress = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
floatzip.decompress(packed, restored, workers=1)
after_decompress = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps([base, after_compress, after_decompress]))
"""


def test_peak_memory_is_about_one_tensor(tmp_path):
    rng = np.random.default_rng(3)
    tensor_values = 2_000_000                        # 4 MB each in BF16
    tensors = [(f"layer.{i}.weight", "BF16", [tensor_values],
                bf16_bits(rng.standard_normal(tensor_values) * 0.02)) for i in range(24)]
    src = write_safetensors(tmp_path / "big.safetensors", tensors)    # 96 MB
    small = write_safetensors(tmp_path / "small.safetensors", tensors[:1])
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(src), str(tmp_path / "p.fz"),
                          str(tmp_path / "r.safetensors"), str(small)],
                         capture_output=True, text=True, check=True)
    base, after_compress, after_decompress = (kb * 1024 for kb in json.loads(out.stdout))
    largest = 2 * tensor_values
    # The warm-up on a one-tensor file held one tensor's buffers already; 24
    # tensors must not add anything near the 96 MB checkpoint (or its 64 MB
    # coded form), as memory-mapping the whole input would.
    assert after_compress - base < 8 * largest, (base, after_compress)
    assert after_decompress - base < 8 * largest, (base, after_decompress)
    assert (tmp_path / "r.safetensors").read_bytes() == src.read_bytes()
