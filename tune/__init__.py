"""Ray Tune experiment over the training engine (run ``python tune/search.py``)."""
