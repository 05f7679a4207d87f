"""The compiled kernel (service/kernel/native/*.c); everything else is in pyproject.toml.

The extension is optional: without a C compiler the build warns and the package installs with
the pure reference (service/kernel/reference.py), slower but the same answers."""

from glob import glob

from setuptools import Extension, setup

setup(ext_modules=[Extension("service.kernel._native", sorted(glob("service/kernel/native/*.c")),
                             depends=["service/kernel/native/kernel.h"], optional=True,
                             # no fused multiply-adds: the compiled arithmetic stays the
                             # reference's, operation for operation, on every processor
                             extra_compile_args=["-O2", "-ffp-contract=off", "-Wall",
                                                 "-Wextra", "-Wno-unused-parameter"])])
