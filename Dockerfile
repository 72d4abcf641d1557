# syntax=docker/dockerfile:1
# offload as a sidecar image: wheels built in one stage, installed offline into a slim Python
# without build tools or pip cache, run as uid 10001 with offload as the entry point.
#   docker build -t offload .
#   docker run --rm -p 8080:8080 -v "$PWD/public:/srv:ro" offload --upstream app:3000 --static /srv
# Ports: 8080 public, 9901 admin (/livez, /readyz, /metrics, /drain). Needs BuildKit (the default
# builder since Docker 23) for the RUN --mount below.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY offload ./offload
# offload and every dependency as wheels (all of them ship binary wheels for CPython 3.11)
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin offload

USER 10001:10001
EXPOSE 8080 9901
# Liveness of the admin listener, with the stdlib (slim has no curl). Follows OFFLOAD_ADMIN_PORT;
# Kubernetes ignores HEALTHCHECK and uses the pod's probes instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + (os.environ.get('OFFLOAD_ADMIN_PORT') or '9901') + '/livez', timeout=2)"]
ENTRYPOINT ["offload"]
