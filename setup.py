"""Build hook: cffi compiles the native sampler (sources in native/) into mprofile_ipy._native."""

from setuptools import setup

setup(cffi_modules=["mprofile_ipy/_native_build.py:ffibuilder"])
