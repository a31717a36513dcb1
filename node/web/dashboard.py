"""Placeholder router, replaced by its implementation (issue 4)."""

from fastapi import APIRouter

router = APIRouter()
