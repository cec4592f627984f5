"""The run configuration: defaults, parsing, and errors that name the key."""

import tomllib
from pathlib import Path

import pytest

from fedforget.config import ConfigError, FederationConfig

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_app_config_equals_the_dataclass_defaults():
    """flwr run reads pyproject, run_simulation the dataclass: they must agree."""
    from flwr.common.config import flatten_dict

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    app_config = flatten_dict(pyproject["tool"]["flwr"]["app"]["config"])
    assert app_config == FederationConfig().to_run_config()
    assert "federations" not in pyproject["tool"]["flwr"], "keep federations in FLWR_HOME"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pathspec's, inside flwr's build
def test_the_app_bundle_holds_the_apps_and_their_package_only():
    """`flwr run .` bundles the project (a FAB, at most 10 MB): not the committed results."""
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(ROOT)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert {"clients/client_app.py", "server/server_app.py", "fedforget/config.py"} <= set(names)
    assert any(n.startswith("fedforget/data/splits/") and n.endswith(".json") for n in names)
    assert {n.split("/")[0] for n in names} == {
        ".info",
        "pyproject.toml",
        "clients",
        "server",
        "fedforget",
    }
    assert len(fab) < 4 * 1024 * 1024


def test_round_trip_and_coercion():
    config = FederationConfig.from_run_config({"unlearn-clients": 3, "alpha": 1, "lr": 0.1})
    assert config.targets == ("3",)
    assert config.alpha == 1.0
    assert FederationConfig.from_run_config(config.to_run_config()) == config


@pytest.mark.parametrize(
    ("run_config", "key"),
    [
        ({"puf.eta-special": 0.0}, "puf.eta-special"),
        ({"puf.eta-regular": -1.0}, "puf.eta-regular"),
        ({"puf.eta-specal": 1.0}, "puf.eta-specal"),
        ({"puf.source": "cache"}, "puf.source"),
        ({"method": "puf"}, "method"),
        ({"methods": "puf-special,federased"}, "methods"),
        ({"alpha": 0.0}, "alpha"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"unlearn-at-round": 70}, "unlearn-at-round"),
        ({"unlearn-clients": "12"}, "unlearn-clients"),
        ({"unlearn-mode": "regular"}, "unlearn-mode"),
        ({"num-partitions": "ten"}, "num-partitions"),
        ({"recovery-target-acc": 97.0}, "recovery-target-acc"),
        ({"unlern-clients": "1"}, "unlern-clients"),
        ({"exclude-clients": "0"}, "exclude-clients"),
    ],
)
def test_invalid_config_names_the_key(run_config, key):
    with pytest.raises(ConfigError, match=key):
        FederationConfig.from_run_config(run_config)


def test_method_tables_keep_only_what_differs_and_round_trip():
    config = FederationConfig.from_run_config(
        {"method": "puf-regular", "puf.eta-regular": 10, "puf.eta-special": 2.0}
    )
    assert config.method_settings == (("puf.eta-regular", 10.0),)
    assert config.settings_of("puf") == {
        "eta-special": 2.0,
        "eta-regular": 10.0,
        "eta-max": 100.0,
        "source": "stored",
    }
    flat = config.to_run_config()
    assert flat["puf.eta-regular"] == 10.0 and flat["puf.source"] == "stored"
    assert FederationConfig.from_run_config(flat) == config
    assert config.kept_methods == ("puf-regular",)


def test_lr_schedule():
    config = FederationConfig(lr=0.1, lr_decay=0.998)
    assert config.lr_at(1) == pytest.approx(0.1)
    assert config.lr_at(3) == pytest.approx(0.1 * 0.998**2)


@pytest.mark.parametrize(
    "path", sorted((ROOT / "experiments").glob("*.toml")), ids=lambda p: p.name
)
def test_every_experiment_configuration_is_valid(path):
    """Each file in experiments/ is a run config, or an experiment file, fedforget accepts."""
    import tomllib

    from fedforget.cli import parse_run_config
    from fedforget.experiment.spec import load_experiment

    document = tomllib.loads(path.read_text())
    if "experiment" in document:
        # settings-from names what `fedforget tune` writes, which may not exist yet
        spec = load_experiment(path, settings_from=False)
        if "tune" in document:
            from fedforget.experiment.tune import load_tune

            load_tune(path, spec)
        config = spec.config
    else:
        config = FederationConfig.from_run_config(parse_run_config([str(path)]))
    assert config.num_server_rounds > config.unlearn_at_round


@pytest.mark.parametrize(
    "path",
    sorted(
        [*(ROOT / "experiments").glob("cifar*.toml"), *(ROOT / "experiments").glob("prostate*")]
    ),
    ids=lambda p: p.name,
)
def test_paper_configurations_run_the_baselines_as_their_authors_did(path):
    """The paper's code recomputes PUF's pseudo-gradient (source='fresh'); the CIFAR files
    replace the defaults chosen on digits by the authors' values."""
    from fedforget.cli import parse_run_config

    config = FederationConfig.from_run_config(parse_run_config([str(path)]))
    assert config.settings_of("puf")["source"] == "fresh"
    assert config.settings_of("mode")["lr"] == config.lr  # the port's targets: the base lr
    if path.name.startswith("cifar"):
        assert config.settings_of("pga")["stop-distance"] == 36.0  # the port's L2 6.0
        assert config.settings_of("mode")["remaining-lr"] == 0.0005
        assert config.settings_of("centralised.ga")["stop-forget-acc"] == 0.0
        assert config.settings_of("centralised.iu")["damping"] == 1.0
