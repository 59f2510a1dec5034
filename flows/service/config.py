"""User configuration: model URIs and defaults, from flags, `TTC_*` environment variables or a
`.env` file. The database URL is `db`'s own setting (`TTC_DATABASE_URL`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelSettings(BaseSettings):
    """Which engines a run uses. Defaults are the testbed checkpoints shipped with the package."""

    model_config = SettingsConfigDict(env_prefix="TTC_", env_file=".env", extra="ignore")

    proposer: str = Field("testbed:proposer", description="URI of the model that writes solutions")
    verifier: str = Field("testbed:prm", description="URI of the process reward model")
    reviser: str | None = Field(
        None, description="URI of the reviser (default: the testbed reviser, or else the proposer)"
    )
    seed: int = Field(0, description="base seed of every sampling call")
