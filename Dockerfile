# syntax=docker/dockerfile:1
#
# clerk-gateway container image.
#
#   docker build -t clerk-gateway .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9090:9090 \
#     -e CLERK_PUBLISHABLE_KEY=pk_test_... clerk-gateway
#
# Listeners:
#   8080  public listener (forward-auth decisions, or the sidecar proxy when GATEWAY_UPSTREAM is set)
#   9090  admin listener (/healthz, /readyz, /metrics, /admin/revocations).
#         Outside a container the admin listener defaults to 127.0.0.1:9090; in this image it is
#         bound to 0.0.0.0:9090 so Prometheus and the orchestrator's probes can reach it. Do not
#         publish it to the internet: protect /admin/* with GATEWAY_ADMIN_TOKEN and keep 9090 on
#         an internal network.

ARG PYTHON_IMAGE=python:3.12-slim

# ---------------------------------------------------------------------------------------------
# Stage 1: build a wheel of the project (and of every dependency) without touching the runtime.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# The metadata (and README.md, which pyproject.toml names as the readme) first, then the code.
COPY pyproject.toml README.md* ./
COPY gateway ./gateway

RUN python -m pip wheel --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
# Stage 2: a virtualenv holding only the installed wheels.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS venv

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN python -m venv /opt/clerk-gateway \
    && /opt/clerk-gateway/bin/pip install --no-index --find-links=/wheels clerk-gateway \
    && /opt/clerk-gateway/bin/pip uninstall -y pip \
    && rm -rf /wheels

# ---------------------------------------------------------------------------------------------
# Stage 3: runtime. No compiler, no pip, no source tree; a fixed non-root uid.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="clerk-gateway" \
      org.opencontainers.image.description="JWT gateway for Clerk session tokens: forward-auth and sidecar proxy" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && install -d -m 0700 -o 10001 -g 10001 /var/lib/clerk-gateway

COPY --from=venv /opt/clerk-gateway /opt/clerk-gateway

ENV PATH="/opt/clerk-gateway/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_LISTEN=0.0.0.0:8080 \
    GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 \
    GATEWAY_LOG_FORMAT=json \
    GATEWAY_LOG_LEVEL=info \
    GATEWAY_STATE_DIR=/var/lib/clerk-gateway

USER 10001:10001
WORKDIR /tmp

# The state directory: the SQLite database every worker shares (revocations, webhook
# deliveries, key sets, introspection answers). A volume, so revocations survive the container.
VOLUME ["/var/lib/clerk-gateway"]

EXPOSE 8080 9090

# Liveness only: /healthz does not depend on the identity provider, so an IdP outage does not
# get the container restarted. (Readiness, /readyz, is for the orchestrator's routing.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status == 200 else 1)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["clerk-gateway"]
CMD ["serve"]
