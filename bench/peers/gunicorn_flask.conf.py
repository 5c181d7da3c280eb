"""gunicorn settings of the Flask peer (bench/peers/flask_app.py): 2 processes x 8 threads.

Where it sits: outside the service; bench/peers/run.py passes this file with -c, so gunicorn never reads
the service's own gunicorn.conf.py from the repository root. Each process loads the model at import.
"""
import os

bind = f"127.0.0.1:{os.environ['PEER_PORT']}"
workers = int(os.environ.get("PEER_PROCESSES", "2"))
worker_class = "gthread"
threads = int(os.environ.get("PEER_THREADS", "8"))
timeout = 300  # a worker's first heartbeat comes after the model has loaded, which is slow on a busy machine
control_socket_disable = True  # gunicorn's default control socket is one path for every gunicorn on the machine
accesslog = None
