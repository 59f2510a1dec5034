"""The user-facing side: `cli` (the `ttc` command), `pipelines` (Prefect flows), `service` (solve one
question, traced) and `policy` (the compute-optimal maths, no Prefect)."""

import os

# A busy machine can take longer than Prefect's default 20 s to start the temporary API server that
# a flow run without PREFECT_API_URL uses; failing there would lose the whole run.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# That temporary server's telemetry heartbeat can only fail offline, and on start-up it writes to the
# server's SQLite file while the flow run's own writes are landing ("database is locked" tracebacks in
# the run's log). Set PREFECT_SERVER_ANALYTICS_ENABLED=true to keep it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
