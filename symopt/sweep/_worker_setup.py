"""Dask worker preload of the local cluster :func:`symopt.sweep.engine.dask_client` starts.

``dask_setup`` runs in every worker process once it is up, including the replacement a
nanny starts for a killed worker:

* SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and the
  workers would each print a KeyboardInterrupt traceback. The client handles Ctrl-C and
  closes the cluster, which stops the workers.
* The worker's HTTP server (health, metrics, profiling routes) is stopped unless the
  user asked for a dashboard: nothing but the Dask comm port listens.

Kept free of heavy imports: it runs before the worker accepts tasks.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

#: Set (to "1") in the workers' environment when the user asked for a dashboard.
DASHBOARD_ENV = "SYMOPT_SWEEP_DASHBOARD"


def dask_setup(worker: Any) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.environ.get(DASHBOARD_ENV) != "1":
        server = getattr(worker, "http_server", None)
        if server is not None:
            server.stop()
