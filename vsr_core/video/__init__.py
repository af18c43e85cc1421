"""The one whole-video engine: ``engine.upscale_file`` (used by ``vsr upscale`` and the Serve
job API) over ``plan`` (chunks, work folder), ``chunk`` (one chunk -> one segment), ``on_ray``
(chunks on Ray workers) and ``mux`` (segments + audio -> the output)."""
