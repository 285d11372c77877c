"""The C part of candela-ingest: the writers' wire decoder (src/candela_ingest/_logwire.c)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "candela_ingest._logwire",
            ["src/candela_ingest/_logwire.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        )
    ]
)
