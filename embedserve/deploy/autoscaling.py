"""Autoscaling a model's workers on a gauge: the predicted wait of a request arriving now.

A counter's raw value only grows, so it cannot say whether there are too few workers now; the predicted wait is
what admission refuses on (``max_queue_time``), so holding its average per worker at half the limit adds workers
before requests are refused and removes them when the queue is empty. Two ways, never both for one model:

* an ``autoscaling/v2`` HPA on a ``Pods`` metric served by prometheus-adapter (rule: ``monitoring.adapter_values``);
* a KEDA ``ScaledObject`` with a Prometheus trigger (KEDA creates and owns the HPA itself).
"""

from __future__ import annotations

from typing import Any

from embedserve.deploy.common import WORKERS_JOB, Options, deployed_models, labels, worker_name
from embedserve.deploy.monitoring import SCALE_METRIC, scale_target
from embedserve.fleet import Fleet, FleetModel

SCALE_UP_WINDOW = 0
"""Seconds of sustained demand before adding workers: none, a loading worker already takes minutes."""
SCALE_DOWN_WINDOW = 300
"""Seconds the lower recommendation must hold before workers are removed (each removal drains, each return loads)."""


def _quantity(seconds: float) -> str:
    """A Kubernetes quantity for a number of seconds, in milli-units so that 0.25 stays exact (``250m``)."""
    return f"{round(seconds * 1000)}m"


def _meta(model: FleetModel) -> dict[str, Any]:
    name = worker_name(model)
    return {
        "name": name,
        "labels": labels("worker", name),
    }


def hpa(model: FleetModel) -> dict[str, Any]:
    """The HPA of one model's Deployment: average predicted wait per pod held at :func:`scale_target`."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(model),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker_name(model)},
            "minReplicas": model.replicas.min,
            "maxReplicas": model.replicas.max,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": SCALE_METRIC},
                        "target": {"type": "AverageValue", "averageValue": _quantity(scale_target(model))},
                    },
                }
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": SCALE_UP_WINDOW,
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": SCALE_DOWN_WINDOW,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                },
            },
        },
    }


def keda_scaled_objects(fleet: Fleet, options: Options) -> list[dict[str, Any]]:
    """One KEDA ScaledObject per scalable model. The query sums the gauge over the model's pods; KEDA divides by
    the threshold, which is the same average-per-pod target as the HPA's."""
    objects = []
    for model in deployed_models(fleet):
        if model.replicas.max <= model.replicas.min:
            continue
        query = f'sum({SCALE_METRIC}{{job="{WORKERS_JOB}",model="{model.name}"}})'
        objects.append(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": _meta(model),
                "spec": {
                    "scaleTargetRef": {"name": worker_name(model)},
                    "minReplicaCount": model.replicas.min,
                    "maxReplicaCount": model.replicas.max,
                    "cooldownPeriod": SCALE_DOWN_WINDOW,
                    "triggers": [
                        {
                            "type": "prometheus",
                            "metricType": "AverageValue",
                            "metadata": {
                                "serverAddress": options.prometheus_url,
                                "query": query,
                                "threshold": str(scale_target(model)),
                            },
                        }
                    ],
                },
            }
        )
    return objects
