# omnilive server image: `omnilive serve` on an NVIDIA GPU with the default weights (weights/tiny).
#
#   docker build -t omnilive .
#   docker run --gpus all --network host omnilive                      # http://localhost:8080
#   docker run --gpus all --network host -e OMNILIVE_SESSIONS__MAX_SESSIONS=8 omnilive
#
# WebRTC media uses UDP on ephemeral ports chosen by ICE: use host networking (Linux), or publish
# 8080/tcp and give clients a TURN server (ice_servers in the config). See docs/server.md.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

ARG PYTHON=python3.11
# torch from PyPI on Linux x86_64 is the CUDA build (it brings its CUDA libraries); pin it like the project.
ARG TORCH_SPEC="torch==2.13.0"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/omnilive/.venv \
    PATH=/opt/omnilive/.venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends ${PYTHON} ${PYTHON}-venv \
 && apt-get purge -y software-properties-common && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/omnilive
RUN ${PYTHON} -m venv ${VIRTUAL_ENV} && pip install --upgrade pip && pip install "${TORCH_SPEC}"

# Dependencies first (cached while the code changes), then the project itself.
COPY pyproject.toml README.md ./
COPY model/__init__.py model/__init__.py
COPY avatar_server/__init__.py avatar_server/__init__.py
RUN pip install -e . && pip uninstall -y omnilive

# model/, avatar_server/, configs/, client/ and weights/ (when trained: weights/tiny); see .dockerignore.
COPY . .
RUN pip install --no-deps -e .

RUN useradd --create-home --uid 10001 omnilive && chown -R omnilive /opt/omnilive
USER omnilive

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
# model.device defaults to auto: cuda when the container sees a GPU.
CMD ["omnilive", "serve", "--host", "0.0.0.0", "--port", "8080"]
