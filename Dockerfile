#
# Production image of the pawfect-edit-inpaint Cloud Run service: FLUX.1-Fill-dev with a GGUF
# transformer on one NVIDIA L4, served by gunicorn (inpaint.serving.SERVE_ARGV). The same file
# builds the image the test suite runs (tests/container), with the tiny random model instead of
# the real weights: `make image` (tools/image.py) does that on a fresh machine.
#
# No `# syntax=` line on purpose: it makes BuildKit pull a frontend image from Docker Hub, and the
# frontend built into Docker 20.10 (Cloud Build's docker builder, Debian's docker.io) already
# supports the secret mount used below.
#
# Build (BuildKit; the Hugging Face token is a build *secret*: never a build arg, never an ENV,
# both of which are stored in the image's config and history):
#
#   HF_TOKEN=... DOCKER_BUILDKIT=1 docker build --secret id=hf_token,env=HF_TOKEN \
#       --build-arg QUANT=Q4_0 -t pawfect-edit-inpaint .
#
# (cloudbuild.yaml passes the secret as a file, src=, which its Docker 20.10 builder supports.)
#
# Build arguments:
# - WEIGHTS: which stage provides /models. `real` (default) downloads FLUX.1-Fill-dev with the
#   hf_token secret; `tiny` builds the random tiny model with the project's own builder
#   (`python -m inpaint tiny`, no secret used); `image` copies /models from the image named by
#   WEIGHTS_IMAGE, a weights stage built and pushed earlier (cloudbuild.yaml does this so that a
#   fresh build worker does not download ~17 GB again).
# - PYTHON_IMAGE: the base image. tools/image.py passes an equivalent local Debian/Python 3.11
#   base where the Python image cannot be pulled.
# - TORCH_INDEX_URL: where torch comes from (see CUDA below).
#
# Stages: base (Python + non-root user) -> deps (pinned packages) -> download / tiny (make
# /models) -> weights-real / weights-tiny / weights-image (only /models; WEIGHTS picks one) ->
# runtime (deps + /models copied from the chosen weights + the code).
# The layers are ordered by how often they change, so a code change rebuilds only the last
# layers and does not run the weights stage again. Only /models leaves the weights stage, so
# nothing else that stage wrote (Hub caches, temp files) can reach the image.
#
# CUDA and base image:
# - The default PyPI wheel of torch==2.13.0 is the CUDA 13.0 build: its metadata requires
#   cuda-toolkit==13.0.3 and nvidia-cudnn-cu13==9.20.0.48. CUDA 13 needs an NVIDIA driver >= 580.
# - Cloud Run documents the driver of its L4 instances as 535.216.03 (CUDA 12.2). CUDA's
#   minor-version compatibility does not cross a major version, so the CUDA 13 wheel would not
#   see the GPU there.
# - PyTorch 2.13 also publishes a CUDA 12.6 build (download.pytorch.org/whl/cu126, cuDNN
#   9.10.2.21). A CUDA 12.x build runs on any driver >= 525.60 through minor-version
#   compatibility, and its sm_86 kernels run on the L4 (sm_89). So torch comes from that index.
#   (Local builds, where that index is unreachable, take PyPI's CUDA 13.0 build: still CUDA.)
# - Torch wheels carry the whole CUDA user space (cuBLAS, cuDNN, NCCL, ...) as nvidia-* pip
#   packages, and Cloud Run injects the driver (libcuda). A CUDA base image would only add a
#   second copy of those libraries, so the base is the plain Python image, with the same Python
#   3.11 as development and CI. Pin it by digest (python:3.11-slim-trixie@sha256:...) when
#   builds must be reproducible.
# - Once Cloud Run's L4 driver is >= 580, build with --build-arg
#   TORCH_INDEX_URL=https://pypi.org/simple to get the default CUDA 13.0 wheel.

ARG PYTHON_IMAGE=python:3.11-slim-trixie
# GGUF quantization of the transformer baked into the image; not secret, so a build arg is fine.
# One of Q3_K_S, Q4_0, Q4_1, Q4_K_S, Q5_0, Q5_1, Q5_K_S, Q6_K, Q8_0 (Q4_0: 6.8 GB, Q8_0: 12.7 GB).
ARG QUANT=Q4_0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# real, tiny or image (see the top of this file).
ARG WEIGHTS=real
ARG WEIGHTS_IMAGE=scratch


FROM ${PYTHON_IMAGE} AS base

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The service runs as this unprivileged user; the code and the weights stay owned by root, so
# the process cannot modify them.
RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid app --create-home \
        --home-dir /home/app --shell /usr/sbin/nologin app \
    && python -m venv "${VIRTUAL_ENV}"


FROM base AS deps
ARG TORCH_INDEX_URL

COPY requirements.txt constraints.txt /tmp/requirements/
# torch first, from the CUDA 12.6 index (see the top of this file), then every pinned package
# from PyPI with the same constraints as CI; torch is already satisfied by then (2.13.0+cu126
# matches ==2.13.0). `pip check` fails the build if the resolved set is inconsistent.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
    && pip install --no-cache-dir -r /tmp/requirements/requirements.txt \
        -c /tmp/requirements/constraints.txt \
    && pip check \
    && python -c "import torch; assert torch.version.cuda, 'CPU-only torch'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
    && rm -rf /tmp/requirements


FROM deps AS download
ARG QUANT
# false: leave T5 and CLIP out (about 9.7 GB less to pull at every cold start); only the
# precomputed prompts (INPAINT_DEFAULT_PROMPT, INPAINT_EXTRA_PROMPTS) can then be used, any other
# prompt fails with errorCode prompt_unavailable.
ARG TEXT_ENCODERS=true

WORKDIR /build
# Only the modules the weights command imports, so that changes elsewhere in the code do not
# invalidate this stage (tests/deploy/test_dockerfile.py runs the command with exactly this set):
# the CLI, the settings, and inpaint/model/ (the download, the weights layout, and the model that
# precomputes the prompt embeddings after the download).
COPY inpaint/__init__.py inpaint/__main__.py inpaint/cli.py inpaint/config.py inpaint/errors.py \
     inpaint/logs.py ./inpaint/
COPY inpaint/model/ ./inpaint/model/
# The token is mounted for this RUN only, as a file under /run/secrets (tmpfs): it is not written
# to any layer and does not take part in the cache key. Hub caches go to a temporary HF_HOME that
# is deleted in the same RUN; the per-folder download metadata (.cache) is dropped too.
RUN --mount=type=secret,id=hf_token,target=/run/secrets/hf_token,required=true \
    set -- && if [ "${TEXT_ENCODERS}" = false ]; then set -- --no-text-encoders; fi \
    && HF_HOME=/tmp/hf-home HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
    INPAINT_LOG_LEVEL=INFO \
    python -m inpaint weights --dest /models --quant "${QUANT}" --token-file /run/secrets/hf_token \
        "$@" \
    && rm -rf /tmp/hf-home \
    && find /models -name .cache -prune -exec rm -rf {} + \
    && chmod -R a+rX,go-w /models


FROM deps AS tiny
ARG QUANT

WORKDIR /build
# The tiny random model (tests, local runs), made by the project's own builder with the same
# directory layout as the weights command. Same rule as above: only the modules it imports.
COPY inpaint/__init__.py inpaint/__main__.py inpaint/cli.py inpaint/config.py inpaint/errors.py \
     inpaint/logs.py ./inpaint/
COPY inpaint/model/ ./inpaint/model/
COPY inpaint/randmodel/ ./inpaint/randmodel/
RUN INPAINT_LOG_LEVEL=INFO python -m inpaint tiny --dest /models --quant "${QUANT}" \
    && rm -f /models/.random-model.lock \
    && chmod -R a+rX,go-w /models


# The weights stages proper hold /models and nothing else, so the weights image that
# cloudbuild.yaml pushes (--target weights-real) carries no second copy of the packages.
FROM scratch AS weights-real
COPY --from=download /models /models

FROM scratch AS weights-tiny
COPY --from=tiny /models /models

# /models of an earlier weights build, pushed as its own image (WEIGHTS=image). Its reference is
# chosen by the caller (cloudbuild.yaml tags it with the quantization and a revision).
# hadolint ignore=DL3006
FROM ${WEIGHTS_IMAGE} AS weights-image

# The stage WEIGHTS names (weights-real, weights-tiny or weights-image); hadolint cannot tell that
# the expanded name is a stage of this file.
# hadolint ignore=DL3006
FROM weights-${WEIGHTS} AS weights


FROM deps AS runtime
ARG QUANT

# Runtime settings (inpaint/config.py reads INPAINT_*). The process is offline: the weights are
# in /models and nothing may be fetched from the Hub at run time. NVIDIA_* are what CUDA base
# images set so that the container runtime injects the driver; LD_LIBRARY_PATH covers platforms
# that mount the driver under /usr/local/nvidia.
# - INPAINT_DEVICE=cuda: this image needs its GPU. With `auto` a broken driver would make the
#   instance fall back to the CPU, get ready, and time out every job; with `cuda` warm-up fails
#   and /health answers 503, so Cloud Run replaces the instance. (-e INPAINT_DEVICE=cpu runs it
#   on the CPU on purpose, as the tests do.)
# - PYTORCH_ALLOC_CONF=expandable_segments:True: the working size differs from job to job; the
#   allocator grows segments instead of keeping blocks of every earlier size (fragmentation).
# - The root filesystem is read-only and $HOME is not writable: the compile caches (Triton,
#   Inductor), the CUDA kernel cache and any other cache go to /tmp (Cloud Run's in-memory
#   writable layer).
ENV INPAINT_MODEL_DIR=/models \
    INPAINT_QUANT=${QUANT} \
    INPAINT_DEVICE=cuda \
    PYTORCH_ALLOC_CONF=expandable_segments:True \
    TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    CUDA_CACHE_PATH=/tmp/nv-compute-cache \
    XDG_CACHE_HOME=/tmp/cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HOME=/tmp/huggingface \
    CUDA_MODULE_LOADING=LAZY \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib

# Weights before code: this layer is reused as long as the weights stage is.
COPY --from=weights /models /models

WORKDIR /app
COPY gunicorn.conf.py main.py ./
COPY inpaint/ ./inpaint/
RUN python -m compileall -q /app

USER 10001:10001
EXPOSE 8080
# Cloud Run sets $PORT; gunicorn.conf.py binds to it (8080 when unset).
CMD ["gunicorn", "--config", "gunicorn.conf.py", "inpaint.serving.app:create_app()"]
