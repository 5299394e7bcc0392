"""The benchmarks' timing harness: providers interleaved round-robin with their spread and page faults, and the
malloc setting (keep_heap) that stops fresh outputs from faulting in new pages on every call."""

import subprocess
import sys

import pytest

from benchmarks._harness import interleaved_times


def test_providers_interleaved_round_robin():
    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    timings = interleaved_times(fns, "cpu", min_time=0, min_reps=4, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # the warm-up
    rounds = [calls[3 + 3 * i: 6 + 3 * i] for i in range(4)]
    assert rounds == [list("abc"), list("bca"), list("cab"), list("abc")]  # each round starts one further along
    for t in timings.values():
        assert len(t.times) == len(t.faults) == 4 and t.median >= 0 and t.spread >= 0 and t.faults_per_call >= 0


FAULTS = """
import sys, torch
from benchmarks._harness import interleaved_times, keep_heap
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    assert keep_heap()
t = interleaved_times({"fill": lambda: torch.empty(12 * 2**20).fill_(1.0)}, "cpu", min_time=0, min_reps=5)
print(t["fill"].faults_per_call)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_keep_heap_stops_fresh_pages_faulting_in():
    # A 48 MB output: glibc serves it with a fresh mmap on every call (its threshold stops at 32 MB), so writing
    # it faults in all of its 4 KiB pages each time; with the heap kept, the same pages come back warm.
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])

    assert faults("system") > 10_000
    assert faults("keep") == 0
