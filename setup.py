"""Build script: CMake builds the pybind11 extensions, and the Caffe schema is
compiled to a descriptor that ships inside the package.

Environment variables:
  PYFACELAYERS_CPU_ONLY=1      skip the CUDA module even when nvcc is found
  PYFACELAYERS_CUDA_ARCH=...   CUDA architectures (CMake syntax, default "80-real;90")
  PYFACELAYERS_BUILD_JOBS=N    parallel compile jobs (default: CPU count)
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        outdir = os.path.abspath(os.path.dirname(self.get_ext_fullpath(ext.name)))
        build_dir = os.path.abspath(os.path.join(self.build_temp, "cmake"))
        os.makedirs(build_dir, exist_ok=True)
        # A cache from another environment (e.g. pip's isolated build) names tools
        # that no longer exist: configure afresh each time (objects are kept).
        cache = os.path.join(build_dir, "CMakeCache.txt")
        if os.path.exists(cache):
            os.remove(cache)
        args = [
            "cmake", "-S", ROOT, "-B", build_dir, "-G", "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DCMAKE_LIBRARY_OUTPUT_DIRECTORY=" + outdir,
            "-DPython_EXECUTABLE=" + sys.executable,
            "-Dpybind11_DIR=" + pybind11.get_cmake_dir(),
        ]
        if os.environ.get("PYFACELAYERS_CPU_ONLY", "").lower() in ("1", "true", "yes", "on"):
            args.append("-DPYFACELAYERS_CPU_ONLY=ON")
        if os.environ.get("PYFACELAYERS_CUDA_ARCH"):
            args.append("-DPYFACELAYERS_CUDA_ARCH=" + os.environ["PYFACELAYERS_CUDA_ARCH"])
        subprocess.check_call(args)
        jobs = os.environ.get("PYFACELAYERS_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", build_dir, "-j", jobs])
        self._built_dir = outdir

    def copy_extensions_to_source(self):
        # CMake may build _cuda besides _C: copy every module it made.
        target = os.path.join(ROOT, "pyfacelayers")
        for path in glob.glob(os.path.join(self._built_dir, "_*.so")) + glob.glob(
                os.path.join(self._built_dir, "_*.pyd")):
            shutil.copy(path, target)


class BuildPyWithSchema(build_py):
    """Also compile proto/caffe.proto into pyfacelayers/proto/caffe.desc."""

    def run(self):
        super().run()
        sys.path.insert(0, os.path.join(ROOT, "pyfacelayers", "proto"))
        try:
            from schema_compiler import compile_file
        finally:
            sys.path.pop(0)
        target = os.path.join(self.build_lib, "pyfacelayers", "proto", "caffe.desc")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        compile_file(os.path.join(ROOT, "proto", "caffe.proto"), target)


setup(
    ext_modules=[CMakeExtension("pyfacelayers._C")],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPyWithSchema},
)
