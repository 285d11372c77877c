"""Candela prompts service: versioned prompt templates."""
