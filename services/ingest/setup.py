"""The C part of candela-ingest: the log wire format read in C, for the writers and ingest
(src/candela_ingest/wire/_logwire.c)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "candela_ingest.wire._logwire",
            ["src/candela_ingest/wire/_logwire.c"],
            depends=["src/candela_ingest/wire/_tags.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        )
    ]
)
