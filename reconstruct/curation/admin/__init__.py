"""The staff side of curation, one module per admin page (Django's autodiscovery imports this package).

The model registry's admin is reconstruct/registry/admin.py.
"""

from reconstruct.curation.admin import dataset_images, snapshots, training_runs  # noqa: F401  (register the admins)
