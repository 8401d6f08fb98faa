"""Shared by the deployment-file checks."""

from __future__ import annotations

from inpaint.config import Settings


def setting_env_names() -> set[str]:
    """Every environment variable ``inpaint/config.py`` reads (upper case), so a deployment file
    that sets an ``INPAINT_*`` variable the settings do not know is caught (a typo is silent)."""
    return {
        n.upper()
        for name, f in Settings.model_fields.items()
        for n in (getattr(f.validation_alias, "choices", None) or [f"INPAINT_{name}"])
    }
