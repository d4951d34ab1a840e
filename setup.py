"""Package discovery only; everything else is in pyproject.toml.

The built-in connectors live in ``connectors/`` and install as ``ferryman_connectors``,
a rename that setuptools' declarative ``find`` cannot express.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages("src") + [f"ferryman_connectors{'.' + p if p else ''}" for p in ["", *find_packages("connectors")]],
    package_dir={"": "src", "ferryman_connectors": "connectors"},
)
