# The image every Ray pod of k8s/ runs: the official Ray image of the pinned Ray version plus this
# package. CPU (default, for the cpu-smoke overlay):
#   docker build -t <registry>/cofitune-ray:ray2.60.0-py311-cpu .
# CUDA (for the gpu overlay):
#   docker build --build-arg RAY_PLATFORM=py311-cu128 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     -t <registry>/cofitune-ray:ray2.60.0-py311-cu128 .
# RAY_VERSION must match pyproject.toml's ray pin and the manifests' rayVersion
# (tests/test_k8s_manifests.py checks all three).
ARG RAY_VERSION=2.60.0
ARG RAY_PLATFORM=py311-cpu
FROM rayproject/ray:${RAY_VERSION}-${RAY_PLATFORM}
# Declared again: an ARG before FROM is not visible after it.
ARG RAY_VERSION

ARG TORCH_VERSION=2.13.0
# The CPU wheel index keeps the CPU image free of multi-GB CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# The base image's user is `ray` (uid 1000, gid 100); the manifests run pods as 1000:100.
USER 1000:100
WORKDIR /home/ray/cofitune

# torch first from its own index, so that `pip install .` finds it satisfied.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The source tree stays in the image: configs/ and search_spaces/ are read from here
# (/home/ray/cofitune/configs/toy.yaml is the cpu-smoke entrypoint's config).
COPY --chown=1000:100 . .
RUN pip install --no-cache-dir . \
    && python -c "import ray, cofitune_ray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"
