# Slipway: one image, either entry point (README, "Running it in a container").
#   docker run IMAGE poller run --config /etc/slipway/slipway.yaml
#   docker run IMAGE helm-api [--port N]            (HELM_API_PORT, default 8080, on 0.0.0.0)
# BASE is any Debian-based image with python3 (>= 3.11) and python3-venv. Where no image
# registry is reachable, make one with scripts/base-image and pass --build-arg BASE=...
#
# Layers, least to most often changed: the base and the slipway user, the locked dependencies
# (requirements.lock, every file checked against its hash), the entry point, then the package
# source. A source-only change rebuilds only the last, small layer.
# Dependencies come from wheels/ when scripts/wheels filled it on the build machine (no network
# and no trust store needed inside the build), otherwise from PyPI.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS deps
RUN python3 -m venv /opt/slipway
COPY requirements.lock /tmp/requirements.lock
COPY wheels/ /tmp/wheels/
RUN set -e; \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then from="--no-index --find-links /tmp/wheels"; else from=""; fi; \
    /opt/slipway/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile \
      --require-hashes --no-deps $from -r /tmp/requirements.lock; \
    /opt/slipway/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/slipway/lib

FROM deps AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY poller ./poller
COPY helm_api ./helm_api
# Installed under /overlay so that only the package's own files reach the final image.
RUN /opt/slipway/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile \
      --no-deps --no-index --no-build-isolation --root /overlay . \
 && /opt/slipway/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      -s /overlay /overlay/opt/slipway/lib

FROM ${BASE}
# git: plain git sources are read with git ls-remote / git fetch.
RUN if ! command -v git >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends git ca-certificates \
      && rm -rf /var/lib/apt/lists/*; fi \
 && useradd --system --uid 10001 --home-dir /var/lib/slipway --create-home slipway
COPY --from=deps /opt/slipway /opt/slipway
COPY scripts/entrypoint /usr/local/bin/slipway-entrypoint
COPY --from=source /overlay/ /
ENV PATH=/opt/slipway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/slipway
USER 10001:10001
WORKDIR /var/lib/slipway
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/slipway-entrypoint"]
CMD ["poller", "--help"]
