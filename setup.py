"""The optional C part of ckpttui: everything else is in pyproject.toml.

`ckpttui.jobs._moments` (verify's one-pass statistics) is compiled where a C compiler is
found; without one the build skips it (``optional=True``) and verify uses numpy.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ckpttui.jobs._moments",
            ["src/ckpttui/jobs/_moments.c"],
            # No -march: the module must run on any CPU of the platform it is built for.
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
