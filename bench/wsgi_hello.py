"""A trivial WSGI app for bench_run.py's gunicorn side: answers b"hello <pid>",
or, for /sleep, sleeps (a hung request, for gunicorn's --timeout)."""
import os
import time


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/sleep":
        time.sleep(3600)
    body = b"hello from pid %d\n" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
