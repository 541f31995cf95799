"""Config: defaults, YAML, overrides, saving. Bad configs (unknown keys, wrong types, tabs, missing
files, ...) and their errors that name the key, the file and a suggestion: tests/test_bad_input.py."""

import pytest

from mobilevision.config import ConfigError, find_config, load_config, save_config


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 7\nmodel:\n  backbone:\n    alpha: 0.5\n")
    cfg = load_config(path, ["train.epochs=3", "model.input_size=[128,160]", "seed=5"])
    assert cfg.train.epochs == 3                      # override beats YAML
    assert cfg.model.backbone.alpha == 0.5            # YAML beats default
    assert cfg.train.batch_size == 32                 # default
    assert cfg.model.input_size == [128, 160]
    assert cfg.seed == 5
    assert cfg.name == "exp"                          # run name from the file name
    assert cfg["model"]["backbone"]["output_stride"] == 32
    # Exponents without a dot are strings to YAML 1.1; a float key still reads them as numbers.
    assert load_config(None, ["train.weight_decay=4e-5"]).train.weight_decay == 4e-5


def test_input_size_must_be_multiple_of_32():
    with pytest.raises(ConfigError, match="multiples of 32"):
        load_config(None, ["model.input_size=[100,100]"])


def test_bundled_configs_are_found_by_name_and_valid():
    path = find_config("imagenet_mobilenetv2.yaml")
    assert path.name == "imagenet_mobilenetv2.yaml"
    cfg = load_config("imagenet_mobilenetv2.yaml")
    # The paper's recipe (section 6.1).
    assert cfg.train.optimizer.name == "rmsprop"
    assert cfg.train.optimizer.learning_rate == pytest.approx(0.045)
    assert (cfg.train.optimizer.rho, cfg.train.optimizer.momentum) == (0.9, 0.9)
    assert cfg.train.lr_schedule.decay_rate == pytest.approx(0.98)
    assert cfg.train.weight_decay == pytest.approx(4e-5)
    assert cfg.model.num_classes == 1000 and cfg.model.input_size == [224, 224]
    assert load_config("shapes_classifier.yaml").data.synthetic == "shapes"


def test_saved_config_reloads_to_the_same_values(tmp_path):
    cfg = load_config("shapes_classifier.yaml", ["train.epochs=4", "model.input_size=[64,64]"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("# resolved by mobilevision")
    again = load_config(tmp_path / "config.yaml")
    assert {k: v for k, v in again.to_dict().items() if k != "_source"} == \
        {k: v for k, v in cfg.to_dict().items() if k != "_source"}
