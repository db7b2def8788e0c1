"""What the routers share: path parameters, the problem+json response documentation, limits.

Routers import this module, never each other, so each route file can be read (and changed)
on its own.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from service.schemas import Problem

RunId = Annotated[str, Path(max_length=64, description="The run's id (a UUID).")]
SweepId = Annotated[str, Path(max_length=64, description="The sweep's id (a UUID).")]

PROBLEM = {"model": Problem, "content": {"application/problem+json": {}}}
NOT_FOUND = {404: {**PROBLEM, "description": "No run with this id."}}

MAX_STEP = 2**31 - 1  # steps are 32-bit in the store: a larger bound in a query is a 422
