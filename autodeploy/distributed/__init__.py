"""Tensor and expert parallelism over torch.distributed (NCCL on GPUs, gloo on the CPU).

    dist.py          process group set-up, world size / rank, the control-plane group
    collectives.py   autodeploy::all_reduce / autodeploy::all_gather (identity at world size 1)
    moe_ep.py        autodeploy::moe_ep: this rank's experts' share of an MoE block
    plan.py          the sharding plan (what each rank holds) and its printing
    dims.py          how ops move a split dim (views, transposes, broadcasts, splits)
    region.py        the region solver: from an anchor's slices to the linears that open / close it
    styles.py        HF base_model_tp_plan / recipe tp_plan styles by module path
    detect.py        plan detection from the canonical graph (attention, gated MLP, embedding, lm_head)
    experts.py       expert groups (EP or TP inside experts): detection and rewrite
    rewrite.py       applying a plan: local parameters, local shape constants, collectives
    checkpoint.py    a lazy safetensors state: each rank reads only its slices
    launch.py        `--world-size N` spawning; rank 0 steps the engine and broadcasts each step

Nothing here runs at import time beyond op registration.
"""
