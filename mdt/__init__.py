"""MDTv2 training code (model, optimizer, trainer) built on the mdt_kernels fused kernels.

    models.py          MDTv2 and DiT, the MODELS registry and build_model
    diffusion/         Gaussian diffusion, the MDTv2 loss, samplers
    optim.py           Adan
    data/              training sets (digits, mnist, latent folders, image folders) and the VAE
    checkpoint.py      our checkpoints, and loading models from them or from published weights
    train_step.py      one training step and build_train_step (the trainer and benchmarks/train_step.py)
    sample.py          generation and the sample files (PNG grid, ADM .npz)
    metrics.py, fid.py sample quality on digits and mnist; FID and Inception Score
    utils.py           device choice, process group
    cli.py             the `mdt` command, one module per command: train.py, sample_cli.py (+ sample_shards.py),
                       prepare_latents.py, evaluate.py
"""
