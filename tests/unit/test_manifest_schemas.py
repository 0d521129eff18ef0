"""Every Kubernetes and KServe manifest in deploy/ against the API types the ecosystem ships for it: KServe's SDK
models (generated from its CRDs' OpenAPI schemas) for ClusterServingRuntime and InferenceService, the official
`kubernetes` client's for HorizontalPodAutoscaler and NetworkPolicy. Each field must be one the type has, with
the type's shape (object, list, map, string, integer, boolean), all the way down: a misspelt or misplaced key,
which `kubectl apply` would drop or refuse, fails here. (kubeconform and a cluster's dry run are not installable
here; Istio's and the Prometheus operator's kinds have no Python models and are not checked.)"""

import glob
import os

import kubernetes.client
import pytest
import yaml
from kserve import models as kserve_models

from support import REPO

PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str}
CHECKED = {"serving.kserve.io", "autoscaling", "networking.k8s.io"}


def documents():
    for path in sorted(glob.glob(os.path.join(REPO, "deploy", "*.yaml"))):
        for document in yaml.safe_load_all(open(path, encoding="utf-8")):
            if isinstance(document, dict) and document.get("apiVersion", "").split("/")[0] in CHECKED:
                yield pytest.param(document, id=f"{os.path.basename(path)}:{document['kind']}")


def model_class(name: str):
    return getattr(kserve_models, name, None) or getattr(kubernetes.client, name)


def problems(value, type_name: str, path: str) -> list:
    """Where `value` does not fit the generated type `type_name` (KServe's "list[V1Container]", "dict(str, str)";
    the kubernetes client's "List[V1Container]", "Dict[str, str]")."""
    if type_name.startswith("List["):
        type_name = "l" + type_name[1:]
    if type_name.startswith("Dict["):
        type_name = f"dict({type_name[5:-1]})"
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: a list expected, not {value!r}"[:200]]
        return [p for i, item in enumerate(value) for p in problems(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            return [f"{path}: a map expected"]
        inner = type_name[5:-1].split(", ", 1)[1]
        return [p for key, item in value.items() for p in problems(item, inner, f"{path}.{key}")]
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: {type_name} expected, not {value!r}"[:200]]
    cls = model_class(type_name)
    if not isinstance(value, dict):
        return [f"{path}: a {type_name} object expected"]
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    found = []
    for key, item in value.items():
        if key not in by_key:
            found.append(f"{path}.{key}: {type_name} has no such field")
        else:
            found += problems(item, cls.openapi_types[by_key[key]], f"{path}.{key}")
    return found


@pytest.mark.parametrize("document", documents())
def test_every_field_is_one_the_api_type_has(document):
    group_version = document["apiVersion"].split("/")[-1]
    type_name = f"{group_version[0].upper()}{group_version[1:]}{document['kind']}"
    assert problems(document, type_name, document["kind"]) == []


def test_the_checker_finds_a_misplaced_field():
    runtime = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ClusterServingRuntime",
               "spec": {"containers": [{"name": "c", "image": "i", "port": 8080}], "replicas": "2"}}
    assert problems(runtime, "V1alpha1ClusterServingRuntime", "R") == [
        "R.spec.containers[0].port: V1Container has no such field", "R.spec.replicas: int expected, not '2'"]
