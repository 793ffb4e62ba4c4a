"""Audit trail, reader feedback and live monitoring (see docs/operations.md, "Audit trail")."""

from app.audit.service import Audit

__all__ = ["Audit"]
