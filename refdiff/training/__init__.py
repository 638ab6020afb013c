"""refdiff.training: everything that fits a model to data.

    trainer.py  Trainer: the training loop, EMA, checkpoints, exact resume
    optim.py    SGD, Adam, AdamW, gradient clipping, warmup, EMA
    data.py     built-in and file datasets (nothing downloads), batching
    metrics.py  sample-quality metrics: energy distance, sliced Wasserstein, a judge classifier, Frechet distance
    distributed.py  data parallelism over N processes (MPI; NCCL on GPUs): shards, gradient Allreduce, agreement
    reflow.py   rectified flow (Liu et al. 2022): reflow pairs from a trained flow, retraining on them, straightness
    classifier.py  NoisyClassification: cross-entropy of a noise-conditional classifier on x_t at uniform t
                (Dhariwal & Nichol 2021; guided-diffusion's classifier_train.py), an objective for the Trainer
    autoencoder.py  AutoencoderTraining: the KL autoencoder's loss as a Trainer objective (LDM's first stage)
    hybrid_loss.py  improved DDPM's L_simple + lambda L_vlb with the stop-gradient on the mean (sec. 3.1, eq. 16)
    distill.py  progressive distillation stage by stage (Salimans & Ho 2022 Algorithm 2): halve the steps, each stage a resumable run
"""
