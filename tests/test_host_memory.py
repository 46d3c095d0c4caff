"""The stage processes' allocator setting (runtime/host_memory.py), in fresh processes."""
import subprocess
import sys

import pytest

# Allocates and frees a 64 MB tensor over and over; prints the page faults of the last steps.
PROBE = """
import resource, sys, torch
if sys.argv[1] == "1":
    from pp_sarathi.runtime.host import keep_freed_memory
    print("set", keep_freed_memory())
x = torch.ones(1)
for i in range(24):
    if i == 16:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.empty(16 << 20)
    y.fill_(1.0)
    del y
print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(keep: bool) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if keep else "0"], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split("faults")[-1]), out


def test_keep_freed_memory_reuses_pages():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    on, out = _faults(True)
    if "set False" in out:
        pytest.skip("not glibc: the allocator is left alone")
    off, _ = _faults(False)
    # glibc's default hands the 64 MB block back to the kernel at every free: 16k page faults
    # per step refill it. Kept, the same pages serve every step.
    assert off > 8 * 8000, off
    assert on < 1000, on
