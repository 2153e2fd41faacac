# The AgentFlow Payments server. Build from the repository root:
#   docker build -t agentflow-payments .
#   docker run -p 50051:50051 -p 9464:9464 -e AGENTFLOW_ADMIN_API_KEY=afk_... -v agentflow:/var/lib/agentflow agentflow-payments
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The same pinned versions the tests ran with.
COPY constraints.txt pyproject.toml README.md ./
COPY client ./client
COPY server ./server
RUN pip install -c constraints.txt ./client . \
    && rm -rf /src

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/agentflow --create-home agentflow
USER agentflow
WORKDIR /var/lib/agentflow

ENV AGENTFLOW_LISTEN=0.0.0.0:50051 \
    AGENTFLOW_METRICS_LISTEN=0.0.0.0:9464 \
    AGENTFLOW_DATA_DIR=/var/lib/agentflow
VOLUME ["/var/lib/agentflow"]
EXPOSE 50051 9464

# grpc.health.v1 Check against the configured port; NOT_SERVING (shutting down) counts as unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 CMD ["agentflow", "healthcheck"]

# exec form: SIGTERM from `docker stop` reaches the server, which shuts down gracefully.
STOPSIGNAL SIGTERM
CMD ["agentflow", "serve"]
