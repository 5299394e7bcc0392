"""One module per op: reference, Triton kernels, registration, autograd and the public function."""
