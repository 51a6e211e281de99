"""The model registry: versions, activation, rollback, loading (services), reads (selectors) and the admin.

The tables (ModelVersion, ModelActivation) stay in reconstruct/models.py, so no migration moved.
"""
