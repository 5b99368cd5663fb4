"""`pip install .`: the flotilla Python package, built by the project's own CMake build.

The extension module and the `flotilla` executable come from build/release (configured with the
`release` preset when it is not there yet), so nothing is fetched. With Debian's Python, install
into a virtual environment that sees the system's packages (NumPy):

    python3 -m venv --system-site-packages .venv
    .venv/bin/pip install --no-build-isolation .
"""

import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = ROOT / "build" / "release"
        if not (build / "CMakeCache.txt").exists():
            subprocess.check_call(["cmake", "--preset", "release"], cwd=ROOT)
        subprocess.check_call(["cmake", "--build", str(build), "--target", "flotilla_python", "flotilla"], cwd=ROOT)
        built = sorted((build / "python" / "flotilla").glob("_flotilla*.so"))
        if not built:
            raise RuntimeError(f"the build made no extension module in {build / 'python' / 'flotilla'} (is pybind11-dev installed?)")
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[-1], target)
        # The CLI goes inside the package, where flotilla.run() looks for it first.
        cli = target.parent / "bin" / "flotilla"
        cli.parent.mkdir(exist_ok=True)
        shutil.copy2(build / "bin" / "flotilla", cli)


setup(
    name="flotilla",
    version="0.1.0",
    description="Flotilla's batched C++ environments as Gymnasium and PettingZoo vector envs, and Flotilla runs from Python",
    packages=["flotilla"],
    package_dir={"flotilla": "python/flotilla"},
    ext_modules=[Extension("flotilla._flotilla", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=["numpy"],
    python_requires=">=3.9",
)
