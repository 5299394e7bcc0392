"""One module per op. Each defines `cases(device, dtype, shapes) -> list[Case]` (see benchmarks._harness)."""
