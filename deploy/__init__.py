"""Deployment tooling for AWS Lambda: build, check, deploy and measure the zappa bundle (`python -m deploy`).

It runs on the build machine only and is never part of the bundle: the bundle holds the project's runtime paths
(`deploy.project.PROJECT_PATHS`), which do not include this package, and the bundle check refuses a `deploy/` in it.
"""
