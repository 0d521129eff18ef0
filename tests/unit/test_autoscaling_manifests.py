"""deploy/'s autoscaling pieces agree with the declarations and with each other (docs/autoscaling.md).

containerConcurrency is derived from models/*/model.yaml; the PrometheusRule, the plain rules file, the
prometheus-adapter rule, the HPA and the Standard-mode InferenceService name each other's series, metrics
and objects. tests/integration/test_autoscaling_signal.py evaluates the rule on a real server.
"""

import dataclasses
import os
import re
import shutil
import subprocess

import pytest

from tskit.properties import read_properties
from tskit.server import REPO
from tskit import autoscaling
from tskit.admission import admissions
from tskit.declaration import served

QUEUE_LATENCY, REQUESTS = "ts_queue_latency_microseconds", "ts_inference_requests_total"


def manifest(path):
    return autoscaling.load_yaml(path)


def quantity_seconds(value) -> float:
    """A Kubernetes quantity as the HPA reads it: `500m` is 0.5."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_container_concurrency_is_the_declarations_batches_in_every_serverless_manifest():
    declarations = served()
    expected = sum(d.torchserve["batchSize"] * d.torchserve["maxWorkers"] for d in declarations)
    for path in autoscaling.SERVERLESS_MANIFESTS:
        predictor = manifest(path)["spec"]["predictor"]
        assert predictor["containerConcurrency"] == expected, path
        # Knative's soft target stays below the hard limit, or the limit would refuse before scaling starts
        assert predictor["scaleTarget"] <= predictor["containerConcurrency"]
    assert autoscaling.sync_manifests(write=False) == [], "run `make kserve` to rewrite containerConcurrency"


def test_torchserve_never_refuses_what_the_queue_proxy_admits():
    # all of a pod's admitted requests may be for one model: that model's workers take a full batch each,
    # the rest wait in its TorchServe queue, which must hold them (else 503 instead of buffering)
    props = read_properties(os.path.join(REPO, "config.properties"))
    limit = autoscaling.container_concurrency()
    for model in admissions(props, served()):
        assert limit - model.in_workers <= model.queue, model


def test_a_changed_declaration_rewrites_only_the_concurrency_line(tmp_path, monkeypatch):
    originals, copies = list(autoscaling.SERVERLESS_MANIFESTS), []
    for path in originals:
        copies.append(str(tmp_path / os.path.basename(path)))
        shutil.copy(path, copies[-1])
    monkeypatch.setattr(autoscaling, "SERVERLESS_MANIFESTS", copies)
    bigger = [dataclasses.replace(d, torchserve=dict(d.torchserve, batchSize=8)) for d in served()]
    assert autoscaling.sync_manifests(declarations=bigger) == copies
    assert autoscaling.sync_manifests(write=False, declarations=bigger) == []
    for original, copy in zip(originals, copies):
        before, after = manifest(original), manifest(copy)
        assert after["spec"]["predictor"].pop("containerConcurrency") == 8 * sum(
            d.torchserve["maxWorkers"] for d in bigger)
        before["spec"]["predictor"].pop("containerConcurrency")
        assert after == before
        with open(original, encoding="utf-8") as f, open(copy, encoding="utf-8") as g:
            changed = [(a, b) for a, b in zip(f, g) if a != b]
        assert len(changed) == 1 and "containerConcurrency" in changed[0][1]


def test_the_crd_and_the_plain_rules_file_hold_the_same_rules():
    assert autoscaling.rule_groups(autoscaling.PROMETHEUS_RULE) == autoscaling.rule_groups(autoscaling.RULES_FILE)
    assert manifest(autoscaling.PROMETHEUS_RULE)["kind"] == "PrometheusRule"


def test_every_rule_divides_queue_latency_by_requests_of_the_same_labels():
    rules = autoscaling.queue_wait_rules()
    assert len(rules) == 2
    for rule in rules:
        assert (rule.numerator, rule.denominator, rule.scale) == (QUEUE_LATENCY, REQUESTS, 1e6)
        assert "model_name" in rule.by and "namespace" in rule.by
    # both counters are exported per model (metrics.yaml), so `sum by (model_name)` has something to group
    exported = {m["name"]: m["dimensions"] for m in manifest(os.path.join(REPO, "metrics.yaml"))["ts_metrics"]["counter"]}
    assert "model_name" in exported[QUEUE_LATENCY] and "model_name" in exported[REQUESTS]


def test_a_rule_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="expected"):
        autoscaling.parse_rule("x", f"rate({QUEUE_LATENCY}[2m]) / rate({REQUESTS}[2m])")


def test_the_adapter_serves_the_per_pod_record_under_the_hpas_metric_name():
    rules = {r.record: r for r in autoscaling.queue_wait_rules()}
    adapter = manifest(autoscaling.ADAPTER_VALUES)["rules"]["custom"]
    assert len(adapter) == 1
    series = adapter[0]["seriesQuery"].split("{")[0]
    assert series in rules
    overrides = adapter[0]["resources"]["overrides"]
    assert set(overrides) <= set(rules[series].by) and overrides["pod"] == {"resource": "pod"}
    hpa = manifest(autoscaling.HPA)
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == adapter[0]["name"]["as"]
    assert metric["target"]["type"] == "AverageValue"


def test_the_hpa_scales_the_standard_predictor_above_batching_and_below_admission():
    hpa, isvc = manifest(autoscaling.HPA), manifest(autoscaling.STANDARD_MANIFEST)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": f"{isvc['metadata']['name']}-predictor"}
    target = quantity_seconds(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"])
    # above what batching alone costs a request (at most maxBatchDelay), so light traffic never scales
    assert target > max(d.torchserve["maxBatchDelay"] for d in served()) / 1000 * 10
    # below the wait at which TorchServe starts refusing: jobQueueSize requests at ~121 req/s tuned (make tune)
    props = read_properties(os.path.join(REPO, "config.properties"))
    one_shot = [d for d in served() if d.name not in autoscaling.streamed()]
    assert target < min(m.queue for m in admissions(props, one_shot)) / 121 / 2
    cpu = manifest(os.path.join(autoscaling.DEPLOY, "inferenceservice-cpu.yaml"))
    assert hpa["spec"]["maxReplicas"] == cpu["spec"]["predictor"]["maxReplicas"]
    assert hpa["spec"]["minReplicas"] == isvc["spec"]["predictor"]["minReplicas"]


def test_the_standard_manifest_is_the_cpu_one_in_raw_deployment_mode():
    cpu = manifest(os.path.join(autoscaling.DEPLOY, "inferenceservice-cpu.yaml"))
    standard = manifest(autoscaling.STANDARD_MANIFEST)
    assert standard["metadata"]["name"] == cpu["metadata"]["name"]  # deploy/networkpolicy.yaml selects it
    annotations = standard["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"  # no HPA of KServe's beside ours
    assert {k: v for k, v in cpu["metadata"]["annotations"].items() if "prometheus" in k}.items() <= annotations.items()
    assert standard["spec"]["predictor"]["model"] == cpu["spec"]["predictor"]["model"]
    # nothing enforces these without Knative: they would only mislead
    assert not {"containerConcurrency", "scaleMetric", "scaleTarget"} & set(standard["spec"]["predictor"])


def test_the_rule_evaluated_on_two_scrapes():
    rule = autoscaling.queue_wait_rules()[0]
    line = '{name}{{model_name="{model}",model_version="default",hostname="pod-a",}} {value}\n'

    def scrape(values):
        text = ""
        for name in (QUEUE_LATENCY, REQUESTS):
            text += f"# TYPE {name} counter\n"
            text += "".join(line.format(name=name, model=m, value=v[name]) for m, v in values.items())
        return text

    before = scrape({"idle": {QUEUE_LATENCY: 5e6, REQUESTS: 10}})
    after = scrape({"idle": {QUEUE_LATENCY: 5e6, REQUESTS: 10}, "busy": {QUEUE_LATENCY: 8e6, REQUESTS: 40}})
    readings = autoscaling.evaluate(rule, before, after)
    assert readings["idle"].seconds == 0.0 and readings["idle"].requests == 0
    assert readings["busy"].seconds == pytest.approx(0.2) and readings["busy"].requests == 40


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) not installed")
def test_promtool_checks_and_unit_tests_the_rules():
    deploy = autoscaling.DEPLOY
    for command in (["check", "rules", "queue-wait.rules.yaml"], ["test", "rules", "queue-wait.rules.test.yaml"]):
        result = subprocess.run(["promtool", *command], cwd=deploy, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_adapter_leaves_out_exactly_the_streamed_models():
    """A generator's queue-latency counter counts whole streams (TorchServe restarts the clock per step)."""
    adapter = autoscaling.load_yaml(autoscaling.ADAPTER_VALUES)["rules"]["custom"]
    query = adapter[0]["metricsQuery"]
    left_out = re.search(r'model_name!~"([^"]*)"', query).group(1)
    assert sorted(left_out.split("|")) == autoscaling.streamed() == ["smollm2_chat"]
