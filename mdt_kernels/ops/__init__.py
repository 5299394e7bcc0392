"""One module per op family (adaln.py holds the three adaLN ops, the others one op each): reference, Triton
kernels, registration, autograd and the public functions."""
