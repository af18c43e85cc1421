"""Ray Serve app for VSR+++ v2 (``serve.app``) and a small HTTP client (``serve.client``).

Importing this package starts nothing; it does not even import Ray.
"""
