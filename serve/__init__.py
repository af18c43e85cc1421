"""Ray Serve app for VSR+++ v2 (``serve.app``) and a small HTTP client (``serve.client``).

Importing this package starts nothing; it does not even import Ray.
"""
from vsr_core.commands import DISTRIBUTION  # noqa: F401 - marks this `serve` as vsr-core's (see vsr_core.commands)
