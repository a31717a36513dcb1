"""Placeholder router, replaced by its implementation (issue 4)."""

from fastapi import APIRouter

router = APIRouter()


@router.post("/studies", include_in_schema=False)
def _placeholder() -> None:  # replaced by STOW-RS
    raise NotImplementedError
