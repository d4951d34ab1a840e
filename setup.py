"""Package discovery only; everything else is in pyproject.toml.

The built-in connectors live in ``connectors/`` and install as ``ferryman_connectors``,
a rename that setuptools' declarative ``find`` cannot express. The example configs
(``config/``) and the systemd units with their README (``systemd/``) stay where the README,
the docs and the tests point, and are installed inside the package as
``ferryman/share/config`` and ``ferryman/share/systemd``: one copy in the repository,
read by ``ferryman init`` and ``ferryman example`` (``ferryman.starter``) from the wheel.
"""

from setuptools import find_packages, setup

CONNECTORS = [f"ferryman_connectors{'.' + p if p else ''}" for p in ["", *find_packages("connectors")]]
SHARED = {"ferryman.share.config": "config", "ferryman.share.systemd": "systemd"}

setup(
    packages=find_packages("src") + CONNECTORS + list(SHARED),
    package_dir={"": "src", "ferryman_connectors": "connectors", **SHARED},
)
