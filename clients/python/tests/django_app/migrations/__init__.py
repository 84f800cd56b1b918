"""Migrations of the Django tests' app."""
