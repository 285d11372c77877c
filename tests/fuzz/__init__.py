"""Fuzzing the C wire decoder against its pure-Python twin (atheris; AddressSanitizer builds)."""
