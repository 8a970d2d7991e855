# llm-router: a slim image running as an unprivileged user.
#   docker build -t llm-router .
#   docker run -p 127.0.0.1:8080:8080 -v "$PWD/config:/etc/llm-router:ro" \
#     -v llm-router-data:/var/lib/llm-router llm-router
# Mount the config's directory (here ./config, holding config.yaml), not the file, so
# edits that save by rename still hot-reload.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LLM_ROUTER_CONFIG=/etc/llm-router/config.yaml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY llm_router ./llm_router
RUN pip install ".[redis]" \
    && useradd --system --uid 10001 --home-dir /var/lib/llm-router --create-home llm-router

# Relative paths in the config (usage.snapshot_path: ./usage.json) land in the data volume.
WORKDIR /var/lib/llm-router
VOLUME ["/var/lib/llm-router"]
USER llm-router
EXPOSE 8080

# The config directory is mounted read-only at /etc/llm-router; edits on the host
# hot-reload.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health/ready', timeout=2).status == 200 else 1)"

STOPSIGNAL SIGTERM
ENTRYPOINT ["llm-router"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
