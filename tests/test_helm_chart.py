"""The Helm chart helm/pydist: rendered and linted by the Helm v4 engine (helm-python-sdk), every
manifest checked against the Kubernetes schemas (kubernetes-validate), and the rendered worker
pod run on the test API server with the real worker image (marker ``kubernetes``)."""

from __future__ import annotations

import base64
import json
import re
import socket
from pathlib import Path

import infra                                  # tests/ is on sys.path (no tests/__init__.py)
import pytest
import yaml

from pydist.managers.kubernetes import pod_log

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install helm-python-sdk)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

CHART = Path(__file__).resolve().parents[1] / "helm" / "pydist"
WORKER_IMAGE = infra.WORKER_IMAGE            # pydist-worker:latest, built by .ci/images.sh
RELEASE, NAMESPACE = "pool", "pools"
EXTERNAL = {"head": {"address": "10.0.0.5"}}
VARIANTS = {
    "external-head": EXTERNAL,
    "head": {"head": {"enabled": True, "command": ["python", "/app/driver.py"], "env": {"N": 4}}},
    "existing-secret": {**EXTERNAL, "cookie": {"existingSecret": "my-cookie", "key": "token"}},
    "hpa": {**EXTERNAL, "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 70}},
    "no-rbac": {**EXTERNAL, "rbac": {"create": False}, "serviceAccount": {"create": False}},
    "everything": {
        "head": {"enabled": True, "command": ["python", "-m", "app"], "args": ["--n", "3"], "port": 7000,
                 "resources": {"limits": {"cpu": "2"}}},
        "image": {"repository": "registry.example/pydist-worker", "tag": "1.2", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}], "replicas": 5, "joinTimeout": 60,
        "extraArgs": ["--bind-to", "0.0.0.0"],
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "env": {"OMP_NUM_THREADS": 1},
        "extraEnv": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}],
        "nodeSelector": {"pool": "cpu"},
        "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                             "labelSelector": {"matchLabels": {"pydist.role": "worker"}}}}]}},
        "extraVolumes": [{"name": "data", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "data", "mountPath": "/data"}],
        "podAnnotations": {"prometheus.io/scrape": "false"}, "podLabels": {"team": "ml"},
        "terminationGracePeriodSeconds": 60, "preStopSleepSeconds": 0,
        "serviceAccount": {"create": True, "name": "driver", "annotations": {"a": "b"}},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10},
    },
}


def render(values: dict | None) -> tuple[list[dict], str, dict[str, str]]:
    """(manifests, NOTES.txt, raw text by template) for a release RELEASE in NAMESPACE."""
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    notes = out.pop(f"{CHART.name}/templates/NOTES.txt", "")
    docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
    return docs, notes, out


def find(docs, kind, name_suffix=""):
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def pod_spec(docs, role):
    return find(docs, "Deployment", f"-{role}")["spec"]["template"]["spec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_chart_lints_without_warnings(variant):
    report = helm.lint(str(CHART), VARIANTS[variant], strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [] and report["errors"] == []


@pytest.mark.parametrize("version", ["1.28", kubernetes_validate.utils.latest_version()])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_manifest_is_valid_kubernetes(variant, version):
    docs, _, _ = render(VARIANTS[variant])
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)      # raises with the first error


@pytest.mark.parametrize("variant, kinds", [
    ("external-head", {"Deployment", "Secret", "ServiceAccount", "Role", "RoleBinding"}),
    ("head", {"Deployment", "Service", "Secret", "ServiceAccount", "Role", "RoleBinding"}),
    ("existing-secret", {"Deployment", "ServiceAccount", "Role", "RoleBinding"}),
    ("hpa", {"Deployment", "HorizontalPodAutoscaler", "Secret", "ServiceAccount", "Role", "RoleBinding"}),
    ("no-rbac", {"Deployment", "Secret"}),
])
def test_each_variant_renders_the_objects_it_needs(variant, kinds):
    docs, _, _ = render(VARIANTS[variant])
    assert {d["kind"] for d in docs} == kinds
    assert all(d["metadata"].get("namespace", NAMESPACE) == NAMESPACE for d in docs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_has_standard_labels_and_every_pod_its_role(variant):
    docs, _, _ = render(VARIANTS[variant])
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE and labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/name"] == "pydist" and labels["helm.sh/chart"] == "pydist-0.1.0"
    for deploy in (d for d in docs if d["kind"] == "Deployment"):
        role = deploy["metadata"]["name"].rsplit("-", 1)[1]
        assert deploy["spec"]["selector"]["matchLabels"]["pydist.role"] == role
        assert deploy["spec"]["template"]["metadata"]["labels"]["pydist.role"] == role


@pytest.mark.parametrize("variant, join", [
    ("external-head", "10.0.0.5:9090"),
    ("head", f"{RELEASE}-pydist-head.{NAMESPACE}.svc:9090"),
    ("everything", f"{RELEASE}-pydist-head.{NAMESPACE}.svc:7000"),
])
def test_worker_runs_pydist_worker_join_with_the_cookie_file(variant, join):
    docs, _, _ = render(VARIANTS[variant])
    [container] = pod_spec(docs, "worker")["containers"]
    assert container["command"] == ["python", "-m", "pydist.worker"]
    args = container["args"]
    assert args[:4] == ["--join", join, "--cookie-file", "/var/run/pydist/cookie"]
    assert "--advertise" in args and args[args.index("--advertise") + 1] == "$(POD_IP)"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "pydist-cookie")
    assert (mount["mountPath"], mount["readOnly"]) == ("/var/run/pydist", True)


def test_head_service_is_headless_and_selects_the_head_pod():
    docs, _, _ = render(VARIANTS["head"])
    service = find(docs, "Service", "-head")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"]["pydist.role"] == "head"
    assert service["spec"]["ports"] == [{"name": "join", "port": 9090, "targetPort": "join", "protocol": "TCP"}]
    head = pod_spec(docs, "head")
    [container] = head["containers"]
    assert container["command"] == ["python", "/app/driver.py"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PYDIST_HEAD_PORT"] == "9090" and env["N"] == "4"
    assert env["PYDIST_COOKIE_FILE"] == "/var/run/pydist/cookie"
    assert head["serviceAccountName"] == f"{RELEASE}-pydist" and "automountServiceAccountToken" not in head


@pytest.mark.parametrize("variant", VARIANTS)
def test_cookie_appears_in_the_secret_only(variant):
    docs, notes, raw = render(VARIANTS[variant])
    secrets = [d for d in docs if d["kind"] == "Secret"]
    if variant == "existing-secret":
        assert secrets == []
        volume = next(v for v in pod_spec(docs, "worker")["volumes"] if v["name"] == "pydist-cookie")
        assert volume["secret"]["secretName"] == "my-cookie"
        assert volume["secret"]["items"] == [{"key": "token", "path": "cookie"}]
        return
    [secret] = secrets
    cookie = base64.b64decode(secret["data"]["cookie"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", cookie)
    encoded = secret["data"]["cookie"]
    for path, text in raw.items():
        if not path.endswith("secret.yaml"):
            assert cookie not in text and encoded not in text, f"the cookie leaks into {path}"
    assert cookie not in notes and encoded not in notes


def test_cookie_is_mounted_read_only_for_the_group_of_a_non_root_user():
    docs, _, _ = render(EXTERNAL)
    spec = pod_spec(docs, "worker")
    volume = next(v for v in spec["volumes"] if v["name"] == "pydist-cookie")
    assert volume["secret"]["defaultMode"] == 0o440
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["fsGroup"] == 1000
    assert spec["automountServiceAccountToken"] is False       # workers never talk to the API


def test_hpa_takes_over_the_replica_count():
    docs, _, _ = render(VARIANTS["hpa"])
    assert "replicas" not in find(docs, "Deployment", "-worker")["spec"]
    hpa = find(docs, "HorizontalPodAutoscaler")
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{RELEASE}-pydist-worker"}
    assert hpa["spec"]["scaleTargetRef"] == target
    metrics = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]}
    assert metrics == {"cpu": 80, "memory": 70}
    assert find(render(EXTERNAL)[0], "Deployment", "-worker")["spec"]["replicas"] == 2


def test_role_covers_pods_logs_and_secrets_in_the_release_namespace_only():
    docs, _, _ = render(EXTERNAL)
    role, binding = find(docs, "Role"), find(docs, "RoleBinding")
    rules = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
    assert rules.keys() == {"pods", "pods/log", "secrets"}
    assert {"create", "delete", "list", "watch"} <= rules["pods"] and rules["pods/log"] == {"get"}
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-pydist", "namespace": NAMESPACE}]
    assert not any(d["kind"].startswith("Cluster") for d in docs)


def test_pre_stop_hook_delays_sigterm_and_can_be_turned_off():
    worker = pod_spec(render(EXTERNAL)[0], "worker")["containers"][0]
    assert worker["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "2"]
    worker = pod_spec(render({**EXTERNAL, "preStopSleepSeconds": 0})[0], "worker")["containers"][0]
    assert "lifecycle" not in worker


def test_notes_tell_how_to_connect():
    _, notes, _ = render(EXTERNAL)
    assert "ElasticManager(n=2, port=9090" in notes and "--join 10.0.0.5:9090" in notes
    assert f"get secret {RELEASE}-pydist-cookie" in notes
    _, notes, _ = render(VARIANTS["head"])
    assert 'os.environ["PYDIST_COOKIE_FILE"]' in notes and f"deploy/{RELEASE}-pydist-head" in notes


@pytest.mark.parametrize("bad", [
    {"replicas": "three"}, {"replicas": -1}, {"unknownKey": 1}, {"image": {"pullPolicy": "Sometimes"}},
    {"head": {"port": 70000}}, {"env": {"1BAD": "x"}}, {"cookie": {"key": "no/slash"}},
    {"extraVolumeMounts": [{"name": "x", "mountPath": "/var/run/pydist"}]},
])
def test_schema_rejects_bad_values(bad):
    values = {**EXTERNAL, **bad, "head": {**EXTERNAL["head"], **bad.get("head", {})}}
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(values)
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("values, message", [
    ({}, "head.address is required when head.enabled is false"),
    ({"head": {"enabled": True}}, "head.enabled needs head.command"),
])
def test_missing_head_settings_fail_with_a_clear_message(values, message):
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


def test_values_yaml_documents_exactly_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults) == set(schema["properties"]) - {"global"}


# ---------------------------------------------------------------------------------------------
# The rendered worker pod on the test API server (real container from pydist-worker:latest)

@pytest.fixture
def k8s_server():
    from k8s_apiserver import KubeTestServer
    with KubeTestServer() as server:
        yield server


@pytest.mark.kubernetes
def test_rendered_worker_pod_starts_the_worker_with_the_cookie_mounted(k8s_server, tmp_path):
    import docker
    from k8s_apiserver import wait_for_pod
    from kubernetes import client, config

    infra.require(infra.image_exists(WORKER_IMAGE), f"the worker image {WORKER_IMAGE}")
    kubeconfig = k8s_server.write_kubeconfig(str(tmp_path / "kubeconfig"))
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    head = socket.create_server((k8s_server.gateway, 0))        # stands in for the head: accepts the worker's dial
    head.settimeout(60)
    join = f"{k8s_server.gateway}:{head.getsockname()[1]}"
    repository, tag = WORKER_IMAGE.rsplit(":", 1)
    docs, _, _ = render({"head": {"address": k8s_server.gateway, "port": head.getsockname()[1]},
                         "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}})
    secret = find(docs, "Secret")
    cookie = base64.b64decode(secret["data"]["cookie"]).decode()
    core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": secret["metadata"]["name"]}, "data": secret["data"]})
    template = find(docs, "Deployment", "-worker")["spec"]["template"]

    # 1. The pod as rendered: the worker runs as uid 1000 and dials the head from its pod IP.
    pod = {"metadata": {"name": "worker-0", **template["metadata"]}, "spec": template["spec"]}
    core.create_namespaced_pod(NAMESPACE, pod)
    with head:
        try:
            conn, (peer, _) = head.accept()
        except TimeoutError:
            status = core.read_namespaced_pod("worker-0", NAMESPACE).status.to_dict()
            try:
                output = pod_log(core, "worker-0", NAMESPACE)
            except client.ApiException as err:
                output = err.body
            raise AssertionError(f"the worker never dialed {join}; pod status {status}; output {output!r}") from None
        conn.close()
    pod = wait_for_pod(core, NAMESPACE, "worker-0", lambda p: p.status.pod_ip is not None, 60, "a pod IP")
    assert peer == pod.status.pod_ip
    container = docker.from_env().containers.get(pod.status.container_statuses[0].container_id[len("docker://"):])
    argv = [container.attrs["Path"], *container.attrs["Args"]]
    assert argv[:7] == ["python", "-m", "pydist.worker", "--join", join, "--cookie-file", "/var/run/pydist/cookie"]
    assert argv[argv.index("--advertise") + 1] == pod.status.pod_ip and argv[argv.index("--ident") + 1] == "worker-0"
    assert container.attrs["Config"]["User"] == "1000:1000"
    inspect = json.dumps(container.attrs)
    assert cookie not in inspect and secret["data"]["cookie"] not in inspect

    # 2. The same pod spec reading its cookie file: the Secret's content, readable by the non-root user.
    spec = json.loads(json.dumps(template["spec"]))
    spec["restartPolicy"] = "Never"
    script = "id -u; stat -c '%a %g' /var/run/pydist/cookie; cat /var/run/pydist/cookie"
    spec["containers"][0].update(command=["sh", "-c", script])
    del spec["containers"][0]["args"]
    core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": "cookie-reader", **template["metadata"]}, "spec": spec})
    pod = wait_for_pod(core, NAMESPACE, "cookie-reader", lambda p: p.status.phase in ("Succeeded", "Failed"),
                       60, "Succeeded or Failed")
    uid, mode, value = pod_log(core, "cookie-reader", NAMESPACE).splitlines()
    assert pod.status.phase == "Succeeded"
    assert (uid, mode, value) == ("1000", "440 1000", cookie)
