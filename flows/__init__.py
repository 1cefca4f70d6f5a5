"""Prefect flows of opensora-flow. `configure_prefect_env()` points Prefect at project-local state; every flow
module calls it before importing prefect (not only this __init__, which an editable install made while
flows/ had no __init__.py treats as a namespace package and never runs).

Without `PREFECT_API_URL`, Prefect 3 runs flows in ephemeral mode (a temporary local API, no server to start).
Its state lives under the project folder (`.prefect/`, SQLite), not in the user's home, so a demo leaves no
trace elsewhere and two checkouts never share a database. Values already in the environment win.
"""

from __future__ import annotations

from flows.prefect_env import configure_prefect_env

configure_prefect_env()
