"""The base every settings model derives from: unknown keys are errors, values frozen."""

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SettingsModel = _Model
