"""corpmerge: consolidate rewarded weight-space perturbations into one model (CoRP).

``__version__`` is the one place the version is defined: pyproject.toml reads it (``dynamic``), and
``corpmerge --version``, every lineage's ``corpmerge_version``, the score store and the model card
print it. CHANGELOG.md lists the releases.
"""

__version__ = "0.4.0"
