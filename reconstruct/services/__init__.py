"""The work of the site, one module per concern; views, the API, admin actions and tasks call these.

- uploads: the hourly limit and the real decode of an uploaded photo (``upload_prepare``)
- reconstructions: create, run (the model), retry, delete
- direct_uploads: photos sent by the browser straight to S3 (on Lambda)
- tokens: API tokens

The model registry has its own package, reconstruct/registry.
"""
