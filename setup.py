"""Build script for the optional C++ CPU kernels (``tsubasa_fast._C``).

Metadata lives in pyproject.toml; this file only adds the extension. The extension is
optional by design: when torch is not importable at build time, or the compiler fails,
the install goes on with a warning and the package falls back to the torch reference
backend at run time. It never fails the install.
"""

from __future__ import annotations

import os
import sys
import warnings

from setuptools import setup

EXT_NAME = "tsubasa_fast._C"
SOURCES = ["csrc/topd_select.cpp", "csrc/topd_kl.cpp", "csrc/vexp.cpp", "csrc/bindings.cpp"]


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=1)
    print(f"WARNING: {msg}", file=sys.stderr)


def _extension_setup() -> dict:
    if os.environ.get("TSUBASA_NO_EXTENSION"):
        _warn("TSUBASA_NO_EXTENSION is set: skipping the C++ kernels (torch fallback).")
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as exc:  # torch missing in an isolated build environment
        _warn(f"torch is not importable at build time ({exc}); skipping the C++ kernels.")
        return {}

    class OptionalBuildExtension(BuildExtension):
        """Builds the kernels; a compiler problem becomes a warning, not a failed install."""

        failed: set = set()

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001 - any compiler/linker failure
                self.failed.add(ext.name)
                _warn(
                    f"building {ext.name} failed ({exc}); tsubasa_fast will use the "
                    "torch reference backend on CPU."
                )

        def _built(self):
            return [e for e in self.extensions if e.name not in self.failed]

        def copy_extensions_to_source(self):
            self.extensions = self._built()
            super().copy_extensions_to_source()

        def get_outputs(self):
            self.extensions = self._built()
            return super().get_outputs()

        def get_output_mapping(self):
            self.extensions = self._built()
            return super().get_output_mapping()

    ext = CppExtension(
        EXT_NAME,
        SOURCES,
        extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi"],
        extra_link_args=["-fopenmp"],
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExtension}}


setup(**_extension_setup())
