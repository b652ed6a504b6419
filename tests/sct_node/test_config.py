"""node.toml validation: defaults, the example file, and clear messages for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from sct_node.cli import main
from sct_node.config import NodeConfig, load_config
from sct_node.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "node.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_run_on_loopback():
    config = load_config(None)
    assert config.network.bind_address == "127.0.0.1"
    assert config.network.ae_title == "SCT_NODE"
    assert config.processing.quiet_period_s == 60.0
    assert config.routes[0].model == "diffusion" and config.routes[0].match.modality == ("MR",)  # issue 4: the default


def test_the_documented_example_is_valid_and_uses_every_section():
    config = load_config(EXAMPLE)
    assert config.destinations and config.routes and config.network.allowed_callers
    text = EXAMPLE.read_text()
    for section in ("[network]", "[storage]", "[processing]", "[dispatch]", "[logging]", "[[routes]]",
                    "[[destinations]]", "[[network.allowed_callers]]"):
        assert section in text
    # Every option of every section is documented in the example (commented out where optional).
    for model in (NodeConfig.model_fields["network"].annotation, NodeConfig.model_fields["storage"].annotation,
                  NodeConfig.model_fields["processing"].annotation, NodeConfig.model_fields["dispatch"].annotation,
                  NodeConfig.model_fields["console"].annotation, NodeConfig.model_fields["dicomweb"].annotation,
                  NodeConfig.model_fields["cluster"].annotation):
        for name in model.model_fields:
            assert f"{name} =" in text or f"{name}=" in text or f"[network.{name}]" in text, name


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"network\.prot: unknown key"):
        load_config(_write(tmp_path, "[network]\nprot = 104\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"network\.port: .*found 70000"):
        load_config(_write(tmp_path, "[network]\nport = 70000\n"))


def test_invalid_ae_title(tmp_path):
    with pytest.raises(ConfigError, match=r"network\.ae_title: .*(16|AE title)"):
        load_config(_write(tmp_path, '[network]\nae_title = "A_TITLE_THAT_IS_TOO_LONG"\n'))


def test_route_to_undefined_destination(tmp_path):
    text = '[[routes]]\nname = "r"\ndestinations = ["tps"]\n'
    with pytest.raises(ConfigError, match="route 'r' names destination 'tps', which is not defined"):
        load_config(_write(tmp_path, text))


def test_bad_regex_is_reported(tmp_path):
    text = '[[routes]]\nname = "r"\n[routes.match]\nseries_description = "T1(("\n'
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        load_config(_write(tmp_path, text))


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[network\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nowhere.toml")


def test_serve_check_reports_config_errors_in_one_line(tmp_path, capsys):
    assert main(["serve", "--config", str(_write(tmp_path, "[storage]\nspool = 'x'\n")), "--check"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "storage.spool: unknown key" in err[0]
    assert main(["serve", "--config", str(EXAMPLE), "--check"]) == 0


def test_unknown_qa_threshold_is_an_error(tmp_path):
    text = '[[routes]]\nname = "r"\n[routes.qa_thresholds]\ngamma = { pass_limit = 97.0 }\n'
    with pytest.raises(ConfigError, match=r"routes\.0\.qa_thresholds: .*unknown QA threshold 'gamma'"):
        load_config(_write(tmp_path, text))


def test_a_route_carries_its_qa_thresholds_parsed_once_at_load(tmp_path):
    from dosimetry.verdict import QaThresholds

    text = '[[routes]]\nname = "r"\n[routes.qa_thresholds]\nbone_fraction_percent = { pass_limit = 2.5 }\n'
    route = load_config(_write(tmp_path, text)).routes[0]
    defaults = QaThresholds()
    assert route.thresholds.bone_fraction_percent.pass_limit == 2.5
    assert route.thresholds.bone_fraction_percent.fail_limit == defaults.bone_fraction_percent.fail_limit
    assert route.thresholds.gamma_pass_rate_percent == defaults.gamma_pass_rate_percent
    assert route.thresholds is route.thresholds  # the object made at load, not a new parse per job
    assert load_config(None).routes[0].thresholds == defaults


def test_an_ensemble_route_with_one_sampling_step_is_an_error(tmp_path):
    text = '[[routes]]\nname = "r"\nmodel_steps = 1\nmodel_ensemble = 4\n'
    with pytest.raises(ConfigError, match="model_ensemble = 4 needs model_steps >= 2"):
        load_config(_write(tmp_path, text))
    ok = load_config(_write(tmp_path, '[[routes]]\nname = "r"\nmodel_ensemble = 4\n'))  # the model's ensemble steps
    assert ok.routes[0].model_ensemble == 4 and ok.routes[0].model_steps is None


_PACS = '[[pacs]]\nname = "hospital"\nae_title = "HOSPITAL_PACS"\nhost = "10.1.2.3"\nport = 4242\n'


@pytest.mark.parametrize(("route", "message"), [
    ('fetch_references = ["plan"]\n', r"routes\.0: .*fetch_references = \['plan'\] needs fetch_from"),
    ('fetch_from = "hospital"\n', r"routes\.0: .*fetch_from = 'hospital' needs fetch_references"),
    ('fetch_references = ["ct"]\nfetch_from = "archive"\n',
     r"route 'r': fetch_from names PACS 'archive', which is not defined \(defined: hospital\)"),
    ('fetch_references = ["ct"]\nfetch_from = "hospital"\nqa = false\n', r"fetch_references needs qa = true"),
    ('fetch_references = ["ct", "dose"]\nfetch_from = "hospital"\n', r"routes\.0\.fetch_references\.1: Input should be"),
])
def test_a_route_fetching_reference_data_names_a_defined_pacs_and_what_to_fetch(tmp_path, route, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, f'{_PACS}\n[[routes]]\nname = "r"\n{route}'))


def test_a_pacs_entry_is_validated_and_a_route_may_fetch_from_it(tmp_path):
    config = load_config(_write(tmp_path, f'{_PACS}retrieve = "get"\n\n[[routes]]\nname = "r"\n'
                                          'fetch_references = ["ct", "plan", "structures"]\nfetch_from = "hospital"\n'))
    assert config.pacs[0].retrieve == "get" and config.pacs[0].max_instances == 2000
    assert config.routes[0].fetch_references == ("ct", "plan", "structures")
    with pytest.raises(ConfigError, match=r"pacs\.0\.retrieve: Input should be 'move' or 'get'"):
        load_config(_write(tmp_path, f'{_PACS}retrieve = "store"\n'))
    with pytest.raises(ConfigError, match="pacs names must be unique"):
        load_config(_write(tmp_path, f'{_PACS}\n{_PACS}'))
