"""Candela auth service: organizations and API keys."""
