"""Ray Tune experiment over the training engine (``vsr sweep``, or ``python tune/search.py``)."""
from vsr_core.commands import DISTRIBUTION  # noqa: F401 - marks this `tune` as vsr-core's (see vsr_core.commands)
