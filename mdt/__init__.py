"""MDTv2 training code (model, optimizer, trainer) built on the mdt_kernels fused kernels."""
