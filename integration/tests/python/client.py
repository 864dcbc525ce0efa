"""The official Kubernetes Python client (PyPI `kubernetes`) against a Tug cluster.

Run by integration/tests/kubectl.rs with the project's virtual environment:
    python client.py KUBECONFIG NAMESPACE IMAGE
It creates, lists, watches, patches and deletes a Deployment, reads a pod's log and runs a
command in it over the exec stream; any failure is an exception and a non-zero exit.
"""

import sys
import time

from kubernetes import client, config, watch
from kubernetes.stream import stream

kubeconfig, ns, image = sys.argv[1:4]
config.load_kube_config(config_file=kubeconfig)
apps = client.AppsV1Api()
core = client.CoreV1Api()

deployment = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "py", "labels": {"from": "python"}},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "py"}},
        "template": {
            "metadata": {"labels": {"app": "py"}},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "py",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", "echo py-started; exec httpd -f -p 8080 -h /www"],
                }],
            },
        },
    },
}

created = apps.create_namespaced_deployment(ns, deployment)
assert created.metadata.uid, created
assert "py" in [d.metadata.name for d in apps.list_namespaced_deployment(ns).items]

# Watch until the Deployment reports an available replica.
w = watch.Watch()
available = False
for event in w.stream(apps.list_namespaced_deployment, ns, field_selector="metadata.name=py", timeout_seconds=90):
    d = event["object"]
    if d.status is not None and (d.status.available_replicas or 0) >= 1:
        available = True
        w.stop()
assert available, "the Deployment never had an available replica"

apps.patch_namespaced_deployment("py", ns, {"metadata": {"labels": {"patched": "yes"}}})
assert apps.read_namespaced_deployment("py", ns).metadata.labels["patched"] == "yes"

pod = None
for _ in range(100):
    pods = core.list_namespaced_pod(ns, label_selector="app=py").items
    running = [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
    if running:
        pod = running[0].metadata.name
        break
    time.sleep(0.2)
assert pod, "no running pod"

log = ""
for _ in range(50):
    log = core.read_namespaced_pod_log(pod, ns)
    if "py-started" in log:
        break
    time.sleep(0.2)
assert "py-started" in log, log

out = stream(core.connect_get_namespaced_pod_exec, pod, ns,
             command=["echo", "from-python"], stderr=True, stdin=False, stdout=True, tty=False)
assert "from-python" in out, out

apps.delete_namespaced_deployment("py", ns)
for _ in range(100):
    if "py" not in [d.metadata.name for d in apps.list_namespaced_deployment(ns).items]:
        break
    time.sleep(0.1)
else:
    raise AssertionError("the Deployment was not deleted")
print("python client: ok")
