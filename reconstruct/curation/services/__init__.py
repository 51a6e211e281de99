"""The work of curation, one module per step of a photo's life in the training set:

- arrival: checks, near duplicates and car-likeness as photos arrive (bulk upload, zip, folder, donation)
- review: approve, reject, orientation, flip
- export: snapshots of the approved set and the zip export
- training: start, queue and cancel training runs (the run itself: reconstruct/curation/runner.py)
- compare: two model versions side by side on the same photos

The registry (register, activate, roll back) is reconstruct/registry/services.py.
"""
