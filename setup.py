"""Everything is in pyproject.toml except the optional C fast path, which setuptools only
takes from here: sknet/data/_jpeg.c decodes one rectangle of a JPEG through the system's
libjpeg-turbo (Debian: libjpeg62-turbo-dev), sknet/data/_resample.c resizes as PIL does.
Where it cannot be built (no compiler, no headers) the package installs without it and
sknet.data decodes and resizes through PIL, to the same pixels.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("sknet.data._jpeg", ["sknet/data/_jpeg.c", "sknet/data/_resample.c"],
                            depends=["sknet/data/_resample.h"], libraries=["jpeg"],
                            extra_compile_args=["-ffp-contract=off"], optional=True)])
