FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DATABASE_PATH=/data/animate-bot.sqlite3

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
# The webhook listener, used only when PUBLIC_WEBHOOK_URL is set.
EXPOSE 8080
CMD ["animate-bot"]
