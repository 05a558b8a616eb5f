"""Capture: hook events and transcripts into the store (drain, ingest, import, redaction, Claude settings)."""
