"""A fake Kubernetes API server, with an emulated Chaos Mesh, for tests that drive the official
`kubernetes` client against `http://127.0.0.1:<port>` (no client internals are mocked).

    with FakeKube() as kube:                       # or kube.start() ... kube.stop()
        kube.add_namespace("serving", {"inference-chaos.io/chaos": "enabled"})
        kube.add_node("gpu-1", {"nvidia.com/gpu.present": "true"})
        kube.add_pod("serving", "decode-7d9f8-aaaaa", {"app": "vllm"}, node="gpu-1")
        api = kubernetes.config.new_client_from_config(
            config_file=str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
        kube.chaos.inject_delay_s = 0.2            # knobs: see ChaosMeshBehaviour
        ...
        assert kube.requests[-1].content_type == "application/merge-patch+json"

Served: discovery (/version, /api, /api/v1, /apis, /apis/{group}[/{version}]); namespaces,
nodes, pods (+ pods/eviction), batch/v1 jobs, policy/v1 poddisruptionbudgets,
apiextensions.k8s.io/v1 customresourcedefinitions (read-only: the six Chaos Mesh CRDs), and
chaos-mesh.org/v1alpha1 NetworkChaos, PodChaos, StressChaos, IOChaos, HTTPChaos, TimeChaos. Every
resource takes get/list/watch/create/update/patch/delete/deletecollection, namespaced and
all-namespaces, with labelSelector (full syntax), fieldSelector (metadata.name/namespace
everywhere, pods also spec.nodeName, status.phase, ...), limit/continue, dryRun=All,
resourceVersion on watch (replay from there; none or "0" starts with ADDED for what exists) and
timeoutSeconds. Errors are `Status` objects as the apiserver writes them.

Behaviour worth knowing when writing a backend against it (each is what a real cluster does):

- Chaos Mesh conditions are level-based: right after creation, before any pod is selected, they
  read Selected=False, AllInjected=True, AllRecovered=True; a selector that matches nothing stays
  that way. "Injected" means Selected=True and AllInjected=True.
- `CustomObjectsApi.patch_*` sends merge-patch: a JSON patch (list body) needs
  `_content_type="application/json-patch+json"`; strategic merge on a custom object is 415.
  `CoreV1Api.patch_node` with a dict sends strategic merge, and `spec.taints` has no merge key:
  the list you send replaces all taints. A cordon makes the node lifecycle controller add the
  `node.kubernetes.io/unschedulable:NoSchedule` taint (and remove it on uncordon).
- Deleting a chaos object with the records finalizer returns it with a deletionTimestamp; it
  goes away (DELETED) only after recovery. A write that empties the finalizers of a deleting
  object deletes it; adding a finalizer to a deleting object is 422.
- Evicted or deleted pods are not replaced (only PodChaos pod-kill replaces a pod of a
  ReplicaSet/DaemonSet under a new name, of a StatefulSet under the same name). Jobs run no pods.
"""

from tests.fakekube.chaos_mesh import ChaosMeshBehaviour
from tests.fakekube.server import FakeKube, RecordedRequest

__all__ = ["ChaosMeshBehaviour", "FakeKube", "RecordedRequest"]
