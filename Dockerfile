# One image for every resilience component (store, gateway, controllers, simulated workers) and
# the harness itself. No entrypoint: each container in deploy/ sets its own `command`
# (python -m resilience.<part> ...).
#   docker build -t inference-chaos:dev .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The packages pyproject.toml lists under [tool.setuptools.packages.find], plus what the
# build reads; .dockerignore keeps everything else (the venv, run folders, tests) out.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY inference_chaos ./inference_chaos
COPY resilience ./resilience
COPY experiments ./experiments
COPY probes ./probes
COPY loadtests ./loadtests
COPY reports ./reports
RUN pip install . && cd / && rm -rf /build

# Non-root, with a numeric uid so that `runAsNonRoot` can verify it (the manifests use 10001).
RUN groupadd --system --gid 10001 inference-chaos \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/inference-chaos \
       --shell /usr/sbin/nologin inference-chaos
USER 10001:10001
WORKDIR /home/inference-chaos
