"""``connect_ray``: the one way this project's programs start or join Ray.

``vsr upscale --ray``, ``vsr train --workers N``, ``vsr sweep`` (``tune/search.py``), ``vsr serve``
(``python -m serve``) and ``serve/demo.py`` all connect through it:

- with an address (``auto``, ``HOST:6379``, ``ray://HOST:10001``) it joins that cluster;
- without one it starts a local instance, whose dashboard (when there is one) listens on 127.0.0.1
  only: the dashboard can submit jobs, so it is never exposed by default;
- in a process that has Ray already (a test session, a notebook) it does nothing and returns None:
  that Ray is not the caller's to shut down.

Token authentication is left as it is configured (``RAY_AUTH_MODE``, ``~/.ray/auth_token``): nothing
here turns it off or on. The few real differences between the callers are the options.
"""
from __future__ import annotations

import sys
from typing import Any

from vsr_core.netutil import free_port

LOOPBACK = "127.0.0.1"


def connect_ray(address: str | None = None, *, dashboard: bool | None = None, dashboard_port: int | None = None,
                log_to_driver: bool = True, configure_logging: bool = True) -> Any:
    """Join the cluster at ``address`` or start a local Ray; the ``RayContext``, or None when this process
    was connected already.

    dashboard: a local instance's dashboard: True starts it, False does not, None (Ray's default) starts
        it when its dependencies are installed. It binds to 127.0.0.1 either way.
    dashboard_port: the local dashboard's port; when it is taken (another Ray?), a free one the OS picks,
        said on stderr.
    log_to_driver: print the workers' output here (``vsr train --workers`` shows rank 0's log lines so).
    configure_logging: let Ray set up its loggers (False keeps a progress bar's terminal clean).
    """
    import ray

    if ray.is_initialized():
        return None
    options: dict[str, Any] = {"log_to_driver": log_to_driver, "configure_logging": configure_logging}
    if address:
        return ray.init(address=address, **options)
    options.update(include_dashboard=dashboard, dashboard_host=LOOPBACK)
    if dashboard is not False and dashboard_port:
        port = free_port(dashboard_port)
        if port != dashboard_port:
            print(f"port {dashboard_port} is in use (another Ray?); the dashboard takes port {port}", file=sys.stderr)
        options["dashboard_port"] = port
    return ray.init(**options)
