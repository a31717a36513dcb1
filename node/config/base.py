"""What every section of the configuration shares: strict models and AE title checks."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

AE_TITLE_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE, no backslash


def check_ae_title(value: str) -> str:
    if not AE_TITLE_PATTERN.match(value) or not value.strip():
        raise ValueError(f"AE title {value!r} is not valid: 1-16 printable ASCII characters, no backslash")
    return value.strip()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
