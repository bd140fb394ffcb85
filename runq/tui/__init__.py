"""Textual dashboard (filled by the dashboard issue)."""
