"""Prefect pull steps for the deployments in ``prefect.yaml``."""

from __future__ import annotations

import os
from pathlib import Path

CODE_DIR_VARIABLE = "EVOL_CODE_DIR"


def set_code_directory() -> dict[str, str]:
    """Pull step: change into the project folder (``$EVOL_CODE_DIR``, else where the ``flows`` package lives), so
    entrypoints and relative config paths resolve there.

    A checkout (editable install) runs its own files, a Docker image its ``/app``; no deployment names a folder."""
    configured = os.environ.get(CODE_DIR_VARIABLE)
    directory = Path(configured).expanduser().resolve() if configured else Path(__file__).resolve().parent.parent
    if not (directory / "flows").is_dir():
        raise FileNotFoundError(f"no flows/ folder in {directory}: set {CODE_DIR_VARIABLE} to the project's folder")
    os.chdir(directory)
    return {"directory": str(directory)}
