FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DATABASE_PATH=/data/animate-bot.sqlite3 \
    METRICS_LISTEN_PORT=9464

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install . \
    && useradd --create-home --uid 10001 animate \
    && mkdir -p /data \
    && chown animate:animate /data

USER animate
# The job database lives on a volume so queued work and buttons survive a new container.
VOLUME ["/data"]
# The webhook listener, used only when PUBLIC_WEBHOOK_URL or COG_CALLBACK_URL is set.
EXPOSE 8080
# /metrics, /healthz and /readyz (on 127.0.0.1 unless METRICS_LISTEN_HOST says otherwise).
EXPOSE 9464
# Python's standard library asks /healthz: gateway, database and prediction API all well.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "bot.app.healthcheck"]
CMD ["animate-bot"]
