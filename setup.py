"""Package layout (everything else is in pyproject.toml).

The Hydra configs have one source, the top-level ``conf/`` of the checkout. A built wheel (or a non-editable
install) ships them inside the package as ``mss/conf/``: setuptools maps the package ``mss.conf`` onto ``conf/`` and
takes every YAML file under it as package data. A checkout and an editable install read ``conf/`` itself;
:func:`mss.run.conf_dir` picks whichever of the two exists.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["mss", "mss.*"]), "mss.conf"],
    package_dir={"mss.conf": "conf"},
    package_data={"mss.conf": ["**/*.yaml"]},
    include_package_data=False,  # exactly the globs above (conf/'s sub-folders are config groups, not packages)
)
