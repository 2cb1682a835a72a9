"""Planning a search before it runs, without a GPU and without reading weights: one place for both plans.

`memory`: per-GPU memory of every node under DDP and FSDP, and the strategy that fits
(`python -m cofitune_ray.plan`; preflight makes it for every search). `cost`: time per step, the
search's runs, wall time and GPU-hours against the grid and a full-SFT sweep, and the KubeRay worker
group that runs it (`python -m cofitune_ray.plan.cost`). `measure`: the measured peak memory of
training that the memory plan is checked against (by its tests and benchmarks/memory_plan.py).
This package imports nothing heavy: the CLIs answer `--help` and config errors at once.
"""
