"""gunicorn settings of the production serving command (``inpaint.serving.SERVE_ARGV``).

One worker process owns the GPU; no preload, so the app (and the CUDA context) is created in the
worker, never in the forking master. Several threads let /health and /ready answer while a job
runs; the model itself serialises GPU work. No worker timeout: Cloud Run's request timeout bounds
a job, and a long denoising loop must not look like a hung worker.
"""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("THREADS", "4"))
preload_app = False
timeout = 0
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "20"))
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = "warning"
