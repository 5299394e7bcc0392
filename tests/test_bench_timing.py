"""The benchmarks' timing harness: providers interleaved round-robin with their spread and page faults, and the
malloc setting (keep_heap) that keeps freed memory in the heap."""

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
from benchmarks._harness import interleaved_times
torch.set_num_threads(1)
t = interleaved_times({"fill": lambda: torch.empty(12 * 2**20).fill_(1.0)}, "cpu", min_time=0, min_reps=5)
print(t["fill"].faults_per_call)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_fresh_outputs_fault_their_pages_in_and_are_counted():
    # The cause of profile_ops' unstable rows, and the count its rows now record: glibc serves a 48 MB output with
    # a fresh mmap on every call (its threshold stops at 32 MB), so writing it faults in all of its 4 KiB pages.
    # (keep_heap is not tested to remove them: glibc's posix_memalign can still grow the heap for a lone large
    # buffer, call after call; the faults column of each row shows what happened.)
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) >= 12_000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_keep_heap_is_accepted_by_glibc():
    code = "from benchmarks._harness import keep_heap; print(keep_heap())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "True"
