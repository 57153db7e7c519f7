"""What the spec modules share: strict models and durations written the way people write them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors (reported with a did-you-mean by ``spec.load.translate``)."""

    model_config = ConfigDict(extra="forbid")
