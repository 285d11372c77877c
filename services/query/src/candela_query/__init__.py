"""Candela query service: reads, filters and aggregates logged requests."""
