"""Build of zcnet's optional compiled extension (the rest of the metadata is in pyproject.toml).

``zcnet._speedups`` is built from ``src/zcnet/_ext/*.c`` with the system compiler. The build is
optional: without a compiler (or Python headers) pip installs the pure-Python implementation,
which is complete, and ``zcnet.implementation()`` says which one is active and why.
"""

from glob import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "zcnet._speedups",
            sources=sorted(glob("src/zcnet/_ext/*.c")),
            depends=glob("src/zcnet/_ext/*.h"),
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers"],
            optional=True,
        ),
    ],
)
