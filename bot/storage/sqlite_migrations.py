"""The SQLite schema as numbered migrations."""

from __future__ import annotations

# Numbered migrations: entry N moves the schema from user_version N to N + 1. Append only.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        guild_id           INTEGER NOT NULL,
        channel_id         INTEGER NOT NULL,
        requester_id       INTEGER NOT NULL,
        request_message_id INTEGER,
        input_json         TEXT    NOT NULL,
        seed               INTEGER NOT NULL,
        status             TEXT    NOT NULL CHECK (status IN
            ('queued', 'submitted', 'running', 'delivering', 'done', 'failed', 'canceled')),
        prediction_id      TEXT,
        result_message_id  INTEGER,
        error              TEXT,
        parent_job_id      INTEGER REFERENCES jobs (id),
        predict_time       REAL,
        deleted            INTEGER NOT NULL DEFAULT 0,
        created_at         REAL    NOT NULL,
        updated_at         REAL    NOT NULL,
        submitted_at       REAL,
        started_at         REAL,
        completed_at       REAL
    );
    CREATE INDEX jobs_unfinished ON jobs (status, id)
        WHERE status NOT IN ('done', 'failed', 'canceled');
    CREATE UNIQUE INDEX jobs_prediction ON jobs (prediction_id) WHERE prediction_id IS NOT NULL;
    """,
    # 2: how many times the prediction was made again because its output had expired.
    """
    ALTER TABLE jobs ADD COLUMN reruns INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: how the result is posted, the upload limit Discord gave, the version that made it.
    """
    ALTER TABLE jobs ADD COLUMN output_format TEXT NOT NULL DEFAULT 'mp4';
    ALTER TABLE jobs ADD COLUMN upload_limit INTEGER;
    ALTER TABLE jobs ADD COLUMN model_version TEXT;
    """,
    # 4: the measured queue wait and run time of each succeeded prediction, for estimates.
    """
    CREATE TABLE timings (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        model       TEXT    NOT NULL,
        steps       INTEGER NOT NULL,
        queue_wait  REAL    NOT NULL,
        run_time    REAL    NOT NULL,
        recorded_at REAL    NOT NULL
    );
    CREATE INDEX timings_key ON timings (model, steps, id);
    """,
    # 5: each server's own settings (only those changed from the defaults), members banned
    # from the bot, and the GPU time of runs whose output expired and was made again.
    """
    CREATE TABLE guild_settings (
        guild_id   INTEGER NOT NULL,
        name       TEXT    NOT NULL,
        value_json TEXT    NOT NULL,
        updated_by INTEGER NOT NULL,
        updated_at REAL    NOT NULL,
        PRIMARY KEY (guild_id, name)
    );
    CREATE TABLE guild_bans (
        guild_id   INTEGER NOT NULL,
        user_id    INTEGER NOT NULL,
        banned_by  INTEGER NOT NULL,
        created_at REAL    NOT NULL,
        PRIMARY KEY (guild_id, user_id)
    );
    ALTER TABLE jobs ADD COLUMN earlier_predict_time REAL NOT NULL DEFAULT 0;
    CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);
    CREATE INDEX jobs_requester ON jobs (guild_id, requester_id, id);
    """,
    # 6: the interaction's token, until the status message id is stored or the job ends, so
    # that a restart can edit the original response instead of posting a second message.
    """
    ALTER TABLE jobs ADD COLUMN interaction_token TEXT;
    """,
)
