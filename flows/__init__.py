"""Prefect flows over datasets, the solve service, difficulty-based budget allocation, and the CLI."""

import os

# A busy machine can take longer than Prefect's default 20 s to start the temporary API server that
# a flow run without PREFECT_API_URL uses; failing there would lose the whole run.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
