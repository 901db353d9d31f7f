"""The Grafana dashboard (configs/grafana/vortex-dashboard.json) and the metrics the code exports agree both
ways; that Serve's own metrics it queries exist is checked against a live scrape in test_serving.py."""

import json
import re

from conftest import REPO, dashboard_metrics

DASHBOARD = REPO / "configs/grafana/vortex-dashboard.json"


def exported_metrics() -> set[str]:
    """The service's metrics as Prometheus names them: Ray prefixes `ray_` to every `ray.util.metrics` name."""
    source = (REPO / "deployments/observability.py").read_text()
    return {f"ray_{name}" for name in re.findall(r'"(vortex_[a-z_]+)"', source)}


def test_every_exported_metric_is_on_the_dashboard_and_every_queried_one_exists():
    exported = exported_metrics()
    assert len(exported) >= 9  # the metrics observability.py documents
    queried = {name for name in dashboard_metrics() if name.startswith("ray_vortex_")}
    assert queried == exported, {"queried, not exported": queried - exported, "not on it": exported - queried}


def test_the_dashboard_imports_as_is():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"  # the importer picks the Prometheus data source
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
