"""The tests' server launchers: real processes on free loopback ports (servers, PD clusters,
fronts). They live in ``sglang.tools.server_utils`` (the demo uses them too, and tools sit below
the test package); this module keeps the tests' import path."""

from sglang.tools.server_utils import (
    FRONTS,
    PDCluster,
    Proc,
    free_port,
    launch_pd_cluster,
    launch_router,
    launch_server,
    pd_front_args,
    spawn,
    start,
    wait_all,
    wait_healthy,
)

__all__ = ["FRONTS", "PDCluster", "Proc", "free_port", "launch_pd_cluster", "launch_router",
           "launch_server", "pd_front_args", "spawn", "start", "wait_all",
           "wait_healthy"]
