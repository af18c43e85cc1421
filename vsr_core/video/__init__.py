"""The one whole-video engine: ``pipeline.upscale_file`` (used by ``vsr upscale`` and the Serve
job API) = ``plan`` (a ``VideoPlan``: frames, chunks, output, work folder) -> an executor from
``executors`` (in-process) or ``ray_workers`` (Ray chunk workers), each chunk by ``chunk`` (one
chunk -> one segment) -> ``finalize`` (``mux``: segments + audio -> the output; ``verify``)."""
