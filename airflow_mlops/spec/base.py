"""What the spec modules share: strict models and durations written the way people write them."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Unknown keys are errors (reported with a did-you-mean by ``spec.load.translate``)."""

    model_config = ConfigDict(extra="forbid")


def parse_duration(v: Any) -> Any:
    """Accept seconds, ``'90s'``, ``'5m'``, ``'2h'``, ``'1d'``, ``'2w'`` and ISO 8601 (pydantic's own)."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*", v)
        if m:
            n, unit = float(m.group(1)), m.group(2)
            return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]: n})
    return v


Duration = Annotated[timedelta, Field(json_schema_extra={"examples": ["5m", 300, "PT5M"]})]
