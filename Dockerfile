# Slipway: one image, either entry point.
#   docker run IMAGE poller run --config /etc/slipway/slipway.yaml
#   docker run IMAGE helm-api                       (gunicorn on :8080)
# BASE is any Debian-based image with python3 (>= 3.11) and python3-venv. Where no image
# registry is reachable, make one with scripts/base-image and pass --build-arg BASE=...
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
RUN python3 -m venv /opt/slipway
COPY pyproject.toml README.md ./
COPY poller ./poller
COPY helm_api ./helm_api
RUN /opt/slipway/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && find /opt/slipway -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
# git: plain git sources are read with git ls-remote / git fetch.
RUN if ! command -v git >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends git ca-certificates \
      && rm -rf /var/lib/apt/lists/*; fi \
 && useradd --system --uid 10001 --home-dir /var/lib/slipway --create-home slipway
COPY --from=build /opt/slipway /opt/slipway
COPY scripts/entrypoint /usr/local/bin/slipway-entrypoint
ENV PATH=/opt/slipway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/slipway
USER 10001:10001
WORKDIR /var/lib/slipway
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/slipway-entrypoint"]
CMD ["poller", "--help"]
