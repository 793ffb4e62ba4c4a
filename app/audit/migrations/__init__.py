"""Alembic migrations of the audit store, shipped inside the package (run by ``app.audit.store.upgrade``)."""
