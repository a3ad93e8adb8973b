"""Builds the optional C part of Bramble; everything else is declared in pyproject.toml.

The extension is optional: without a C compiler and Python's headers the install still works and
the TFTP server uses its pure-Python lock-step loop.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bramble.boot._lockstep",
            sources=["src/bramble/boot/_lockstep.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
