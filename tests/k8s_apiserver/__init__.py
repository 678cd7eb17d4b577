"""A small Kubernetes API server for tests: core/v1 pods and secrets, each pod a real Docker container.

Why it exists: no real control plane can be had on the test machines (no
kube-apiserver package, nothing can be downloaded), and the PyPI mocks store
JSON without running anything. This server speaks the HTTP/JSON subset of
core/v1 that the official ``kubernetes`` client (and ``kubectl
--validate=false``) uses, and a kubelet thread runs every pod as a Docker
container on a private network, so a KubernetesManager is tested with real
worker processes, real IPs, real logs and real exits.

Served endpoints (JSON only; anything else answers a 404/405 Status):

    GET                /version  /api  /api/v1  /apis  /healthz  /readyz  /livez
    GET                /api/v1/nodes[/{name}]                 one node, pydist-test-node
    GET, POST          /api/v1/namespaces,  GET /api/v1/namespaces/{ns}
    GET                /api/v1/pods  /api/v1/secrets          all namespaces; list or ?watch=true
    GET, POST, DELETE  /api/v1/namespaces/{ns}/pods           list|watch, create, deletecollection
    GET, PATCH, DELETE /api/v1/namespaces/{ns}/pods/{name}    metadata only; and GET .../status
    GET                /api/v1/namespaces/{ns}/pods/{name}/log   follow, tailLines, timestamps,
                                                                 sinceSeconds, limitBytes
    GET, POST, DELETE  /api/v1/namespaces/{ns}/secrets        list|watch, create, deletecollection
    GET, PUT, PATCH, DELETE  /api/v1/namespaces/{ns}/secrets/{name}

List and watch take ``labelSelector`` (=, ==, !=, in, notin, key, !key) and
``fieldSelector`` (=, ==, != on metadata.name, metadata.namespace,
status.phase, spec.nodeName, spec.restartPolicy, status.podIP; Secret: type).
Watch without ``resourceVersion`` (or with "0") first sends the current
objects as ADDED; with one it replays the history after it (410 Expired when
that is too old); ``timeoutSeconds`` ends the stream.

Modules, one per concern: ``objects`` (constants, times, Status errors, selectors, patches),
``store`` (objects by resourceVersion, watch history), ``containers`` (a pod's container:
image, command, environment, volumes), ``kubelet`` (reconcile, status, restarts, deletion,
logs), ``handler`` (HTTP routes), ``server`` (``KubeTestServer``, ``wait_for_pod``, ``main``:
``cd tests && python -m k8s_apiserver``).

Threads (all daemons, all owned and stopped by ``KubeTestServer``):
``k8s-apiserver-http`` serves requests, one thread per connection;
``k8s-kubelet`` reconciles pods with their containers (one at a time);
``k8s-docker-events`` feeds Docker's event stream to the kubelet;
``k8s-delete-*`` (a pool) runs graceful deletions, which can take a grace period.

Limits, plainly: one container per pod (no init or sidecar containers), no
scheduler beyond nodeSelector against the one node, no Services/DNS names
other than pod names on the Docker network, volumes only ``secret`` and
``emptyDir`` (secret files are written when the container is created, never
refreshed), no probes, no server-side apply, pods' specs cannot be patched,
no strategic list merging, no exec/attach/port-forward, no
auth/RBAC/admission, namespaces are created on first use, images are never
pulled (a missing image never appears unless built locally), ``limit`` and
``continue`` on lists are ignored, watch bookmarks are never sent.
"""

from .server import KubeTestServer, main, wait_for_pod

__all__ = ["KubeTestServer", "wait_for_pod", "main"]
