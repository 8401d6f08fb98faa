"""gunicorn settings of the production serving command (``inpaint.serving.SERVE_ARGV``).

One worker process owns the GPU; no preload, so the app (and the CUDA context) is created in the
worker, never in the forking master. Several threads let /health and /ready answer while jobs
run; the GPU queue (inpaint/session/gpuqueue.py) gives the GPU to one admitted job at a time. No
worker timeout: Cloud Run's request timeout bounds a job, and a long denoising loop must not
look like a hung worker. No control socket: gunicorn 27
creates one under $HOME/.gunicorn by default, which fails on a read-only root filesystem and
offers an admin interface the service does not need.
"""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"
workers = 1
worker_class = "gthread"
# Four more threads than admitted jobs (INPAINT_MAX_QUEUED_JOBS): Cloud Run's --concurrency is
# the admitted jobs + 2 (quick answers never wait behind GPU jobs, docs/delivery.md), and the two
# probes come on top, so every request slot and /health and /ready always find a free thread.
threads = int(os.environ.get("THREADS") or int(os.environ.get("INPAINT_MAX_QUEUED_JOBS", "4")) + 4)
preload_app = False
timeout = 0
# Below Cloud Run's 10 s between SIGTERM and SIGKILL: a job still running after 8 s is cut off by
# gunicorn itself (exit 0); its lease expires and the unacknowledged message is delivered again.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "8"))
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = "warning"
control_socket_disable = True
