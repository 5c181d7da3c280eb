"""deploy/: the systemd units and the Kubernetes manifests, checked by the tools that read them.

- systemd: `systemd-analyze verify` (Debian's package systemd; installed when missing, as tests/sysdeps.py
  does) on copies whose ExecStart points at stand-in executables: verify refuses a command that does not exist,
  and /opt/imgq (where docs/deployment.md installs the package) is not on this machine. `systemd-analyze
  security --offline` scores their hardening; the web server and a worker run under the kernel's PR_SET_MDWE,
  what MemoryDenyWriteExecute= asks. tests/test_containers.py boots the units under systemd in a container.
- Kubernetes: kubernetes-validate --strict (the Kubernetes API's schemas) on every manifest but the KEDA objects
  and the Kustomization, which are not Kubernetes API kinds. The KEDA objects go through the validators that
  the npm package @kubernetes-models/keda compiles from KEDA's CRD schemas (types, enums, required fields; like
  the CRD's structural schema, they do not refuse unknown fields), run by node. No cluster runs them here.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO
from sysdeps import ensure_command

SYSTEMD = os.path.join(REPO, "deploy", "systemd")
KUBERNETES = os.path.join(REPO, "deploy", "kubernetes")
UNITS = ["imgq-web.service", "imgq-worker@.service", "imgq.target"]


def unit_lines(name):
    with open(os.path.join(SYSTEMD, name)) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


@pytest.fixture
def units_here(tmp_path):
    """Copies of the units whose ExecStart= names stand-in executables under tmp_path."""
    bin_dir = tmp_path / "opt" / "imgq" / "bin"
    bin_dir.mkdir(parents=True)
    for command in ("imgq-web", "imgq-worker"):
        (bin_dir / command).write_text("#!/bin/sh\n")
        (bin_dir / command).chmod(0o755)
    copies = tmp_path / "units"
    copies.mkdir()
    for name in UNITS:
        with open(os.path.join(SYSTEMD, name)) as f:
            text = f.read()
        (copies / name).write_text(text.replace("/opt/imgq/bin/", f"{bin_dir}/"))
    return [str(copies / name) for name in UNITS]


def test_the_units_pass_systemd_analyze_verify(units_here):
    analyze = ensure_command("systemd-analyze", "systemd")
    done = subprocess.run([analyze, "verify", *units_here], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


@pytest.mark.parametrize("unit", ["imgq-web.service", "imgq-worker@.service"])
def test_the_services_are_hardened(units_here, unit):
    lines = unit_lines(unit)
    for option in ("DynamicUser=yes", "User=imgq", "ProtectSystem=strict", "NoNewPrivileges=yes", "ProtectHome=yes",
                   "PrivateTmp=yes", "CapabilityBoundingSet=", "EnvironmentFile=/etc/imgq/imgq.env",
                   "Restart=always"):
        assert option in lines, f"{unit} lacks {option}"
    analyze = ensure_command("systemd-analyze", "systemd")
    path = next(p for p in units_here if p.endswith(unit))
    done = subprocess.run([analyze, "security", "--offline=yes", path], capture_output=True, text=True, timeout=120)
    score = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", done.stdout)
    assert score, done.stdout[-2000:] + done.stderr
    assert float(score.group(1)) <= 2.0 and score.group(2) == "OK", score.group(0)


def test_the_worker_unit_is_a_template_and_the_env_file_example_is_plain():
    assert any("%i" in line for line in unit_lines("imgq-worker@.service"))
    for line in unit_lines("imgq.env"):
        assert re.fullmatch(r"[A-Z_]+=\S*", line), f"imgq.env: {line!r} is not NAME=value"
        name = line.split("=")[0]
        from imgq import settings
        assert hasattr(settings, name), f"imgq.env sets {name}, which is not a setting"


MDWE = """
import ctypes, os, sys
# PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: no mapping both writable and executable, none made executable later;
# kept across fork and exec. systemd's MemoryDenyWriteExecute= refuses the same.
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def test_the_web_server_and_a_worker_answer_castle_with_memory_deny_write_execute(redis_server, tmp_path):
    """The units set MemoryDenyWriteExecute=yes: gunicorn with gevent, LiteRT's XNNPACK and NumPy must run
    without writable and executable memory. Run here under the kernel's PR_SET_MDWE (Linux 6.3+)."""
    import signal

    import requests

    from conftest import CASTLE, free_port
    if not os.path.exists(CASTLE):
        pytest.skip(f"{CASTLE} not found")
    probe = subprocess.run([sys.executable, "-c", MDWE, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert probe.returncode != 0 and "Permission denied" in probe.stderr, "PR_SET_MDWE did not refuse W+X memory"
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_server.url, KEY_PREFIX="mdwe", PORT=str(port), LOG_LEVEL="INFO")
    logs = [open(tmp_path / "worker.log", "wb"), open(tmp_path / "web.log", "wb")]
    procs = [subprocess.Popen([sys.executable, "-c", MDWE, os.path.join(REPO, "run_model_server.py")], env=env,
                              cwd=REPO, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True),
             subprocess.Popen([sys.executable, "-c", MDWE, "-m", "gunicorn", "imgq.web.app:create_app()"], env=env,
                              cwd=REPO, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True)]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if requests.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, \
                (tmp_path / "worker.log").read_text()[-2000:] + (tmp_path / "web.log").read_text()[-2000:]
            time.sleep(0.2)
        with open(CASTLE, "rb") as f:
            answer = requests.post(url + "/predict", files={"image": ("castle.jpg", f.read())}, timeout=60)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "castle", answer.text
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for log in logs:
            log.close()


def manifests():
    found = {}
    for name in sorted(os.listdir(KUBERNETES)):
        if name.endswith(".yaml"):
            with open(os.path.join(KUBERNETES, name)) as f:
                found[name] = [doc for doc in yaml.safe_load_all(f) if doc]
    return found


def objects(kind):
    return [doc for docs in manifests().values() for doc in docs if doc.get("kind") == kind]


def one(kind, name):
    [found] = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    return found


def test_the_kustomization_lists_every_manifest():
    [kustomization] = manifests()["kustomization.yaml"]
    assert sorted(kustomization["resources"]) == sorted(n for n in manifests() if n != "kustomization.yaml")
    assert kustomization["namespace"] == one("Namespace", "imgq")["metadata"]["name"]


def test_the_manifests_pass_kubernetes_validate():
    validate = shutil.which("kubernetes-validate", path=os.path.dirname(sys.executable)) or \
        shutil.which("kubernetes-validate")
    assert validate, "kubernetes-validate is not installed (pip install -r requirements.txt)"
    files = [os.path.join(KUBERNETES, name) for name, docs in manifests().items()
             if not any(doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")) for doc in docs)]
    assert len(files) >= 5
    done = subprocess.run([validate, "--strict", *files], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARN" not in done.stdout + done.stderr and "ERROR" not in done.stdout + done.stderr, done.stdout


KEDA_MODELS = "@kubernetes-models/keda@2.0.0"
KEDA_CHECK = """
import { readFileSync } from "node:fs";
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";
const kinds = { ScaledObject, TriggerAuthentication };
let failed = 0;
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  try { new kinds[doc.kind](doc).validate(); console.log(`valid ${doc.kind}`); }
  catch (e) { failed++; console.log(`invalid ${doc.kind} ${doc.metadata?.name}: ${e.message}`); }
}
process.exit(failed ? 1 : 0);
"""


@pytest.fixture(scope="module")
def keda_check():
    """node + the npm package @kubernetes-models/keda: validators compiled from KEDA's CRD schemas (ajv), kept
    in ~/.cache between runs."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        ensure_command("npm", "npm")  # Debian's npm brings nodejs
        node, npm = shutil.which("node"), shutil.which("npm")
    folder = os.path.join(os.path.expanduser("~"), ".cache", "imgq-tests", "keda-models")
    os.makedirs(folder, exist_ok=True)
    if not os.path.isdir(os.path.join(folder, "node_modules", "@kubernetes-models", "keda")):
        done = subprocess.run([npm, "install", "--prefix", folder, "--no-audit", "--no-fund", "--save-exact",
                               KEDA_MODELS], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"npm install {KEDA_MODELS} failed (no network?): {done.stderr.strip()[-300:]}")
    script = os.path.join(folder, "check.mjs")
    with open(script, "w") as f:
        f.write(KEDA_CHECK)

    def check(docs):
        return subprocess.run([node, script], input=json.dumps(docs), capture_output=True, text=True, timeout=60,
                              cwd=folder)
    return check


def test_the_keda_objects_pass_kedas_crd_schemas(keda_check):
    docs = objects("ScaledObject") + objects("TriggerAuthentication")
    assert len(docs) == 2
    done = keda_check(docs)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["valid", "ScaledObject", "valid", "TriggerAuthentication"]


def test_the_keda_check_refuses_a_wrong_scaled_object(keda_check):
    """The validators do check: a number where KEDA wants a string, a missing target name. (Unknown fields
    are not refused: a CRD's structural schema prunes them, and so do these validators.)"""
    [doc] = objects("ScaledObject")
    doc["spec"]["triggers"][0]["metadata"]["listLength"] = 64
    del doc["spec"]["scaleTargetRef"]["name"]
    done = keda_check([doc])
    assert done.returncode == 1
    assert "listLength must be string" in done.stdout and "required property name" in done.stdout


def test_keda_scales_the_workers_on_the_queue_list_down_to_zero():
    from imgq.jobs import keys
    scaled = one("ScaledObject", "imgq-worker")
    settings = one("ConfigMap", "imgq-settings")["data"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == one("Deployment", "imgq-worker")["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] == 0
    triggers = scaled["spec"]["triggers"]
    # One trigger per lane, the interactive one first: every list a job can wait on.
    assert [t["metadata"]["listName"] for t in triggers] == [keys.lane_queue(lane, settings["KEY_PREFIX"])
                                                             for lane in keys.LANES]
    assert triggers[0]["metadata"]["listName"] == keys.queue(prefix=settings["KEY_PREFIX"]) == "imgq:queue"
    for trigger in triggers:
        assert trigger["type"] == "redis" and trigger["metadata"]["activationListLength"] == "0"
        assert int(trigger["metadata"]["listLength"]) >= int(settings["BATCH_SIZE"])  # full batches first
        assert trigger["metadata"]["address"] == triggers[0]["metadata"]["address"]
        assert trigger["authenticationRef"] == triggers[0]["authenticationRef"]
    trigger = triggers[0]
    # The address KEDA dials (from its own namespace) is the Redis Service in the service's namespace.
    host, port = trigger["metadata"]["address"].split(":")
    redis_service = one("Service", "imgq-redis")
    namespace = one("Namespace", "imgq")["metadata"]["name"]
    assert host == f"{redis_service['metadata']['name']}.{namespace}.svc.cluster.local"
    assert int(port) == redis_service["spec"]["ports"][0]["port"]
    auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    [secret] = auth["spec"]["secretTargetRef"]
    redis_env = one("StatefulSet", "imgq-redis")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert secret["parameter"] == "password"
    assert {"name": secret["name"], "key": secret["key"]} == redis_env[0]["valueFrom"]["secretKeyRef"]


def test_the_worker_deployment_leaves_replicas_to_keda():
    assert "replicas" not in one("Deployment", "imgq-worker")["spec"]


def containers(name):
    return one("Deployment", name)["spec"]["template"]["spec"]["containers"]


def test_web_probes_do_not_depend_on_workers():
    """Readiness on /livez: /readyz is 503 while no worker runs, which with KEDA's zero workers would empty the
    Service and no job could ever reach the queue to start one."""
    from imgq.web.auth import OPEN_PATHS
    [web] = containers("imgq-web")
    assert web["args"] == ["web"]
    assert web["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert web["readinessProbe"]["httpGet"]["path"] == "/livez"
    assert {"/livez", "/readyz"} <= set(OPEN_PATHS)  # the probes need no API key


def test_the_probes_answer_as_the_manifests_expect_with_no_worker(service):
    """With no worker at all (KEDA's zero): /livez 200, which keeps the pod in the Service; /readyz 503."""
    import requests
    url, _ = service.start_web()
    assert requests.get(url + "/livez", timeout=10).status_code == 200
    assert requests.get(url + "/readyz", timeout=10).status_code == 503


def test_the_pods_run_as_non_root_on_read_only_filesystems():
    for name in ("imgq-web", "imgq-worker"):
        pod = one("Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["image"].split(":")[0] == "imgq"


def test_the_settings_in_the_manifests_are_settings():
    from imgq import settings
    names = set(one("ConfigMap", "imgq-settings")["data"])
    for name in ("imgq-web", "imgq-worker"):
        names |= {env["name"] for env in containers(name)[0]["env"]}
    unknown = {n for n in names if not hasattr(settings, n)} - {"REDIS_PASSWORD"}  # only to build REDIS_URL
    assert not unknown, f"not settings of imgq/settings.py: {sorted(unknown)}"
