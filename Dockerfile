# offload as a sidecar image: slim Python, a non-root user, offload as the entry point.
#   docker build -t offload .
#   docker run -p 8080:8080 -v "$PWD/public:/srv:ro" offload --upstream app:3000 --static /srv
FROM python:3.11-slim

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin offload
WORKDIR /opt/offload
COPY pyproject.toml README.md ./
COPY offload ./offload
RUN pip install --no-cache-dir . && rm -rf /opt/offload

USER 10001
EXPOSE 8080 9901
ENTRYPOINT ["offload"]
