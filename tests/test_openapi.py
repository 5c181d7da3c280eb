"""GET /openapi.json: an OpenAPI 3 document that openapi-spec-validator accepts, linked from GET /, naming
every route the web server has (so a new endpoint without documentation fails here)."""
import json
import re
import subprocess
import sys

import requests
from openapi_spec_validator import validate

from conftest import REPO

ROUTES = """
import json, run_web_server
print(json.dumps(sorted([m, r.rule] for r in run_web_server.app.url_map.iter_rules() if r.endpoint != "static"
                        for m in r.methods - {"HEAD", "OPTIONS"})))
"""


def test_the_openapi_document_validates_and_covers_every_route(service):
    url, _ = service.start_web()
    index = requests.get(url + "/", headers={"Accept": "application/json"}, timeout=10).json()
    assert index["openapi"] == "/openapi.json" and "GET /openapi.json" in index["endpoints"]
    document = requests.get(url + index["openapi"], timeout=10).json()
    validate(document)  # raises with the reason when the document is not valid OpenAPI
    assert document["openapi"].startswith("3.")

    # The routes of the app gunicorn serves, listed by a process of its own on this test's Redis (importing
    # run_web_server here would start its listener on the default Redis), Flask's <name> written {name}.
    listing = subprocess.run([sys.executable, "-c", ROUTES], env=service.env, cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    routes = json.loads(listing.stdout.strip().splitlines()[-1])
    assert ["POST", "/v2/models/<name>/infer"] in routes
    documented = {(path, method) for path, item in document["paths"].items() for method in item
                  if method in ("get", "post", "put", "delete", "patch")}
    for method, rule in routes:
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)
        assert (path, method.lower()) in documented, f"{method} {path} is not in /openapi.json"
