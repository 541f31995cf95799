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


def test_head_taps_default_per_task_and_are_checked_before_building():
    """`model.head.features` picks the taps; null is the backbone's default for the task, which
    the resolved config then names (so the saved run repeats exactly)."""
    assert load_config("shapes_classifier.yaml").model.head.features == ["out_relu"]
    assert load_config("coco_ssdlite.yaml").model.head.features == ["block_13_expand_relu",
                                                                    "out_relu"]
    assert load_config("shapes_ssdlite.yaml").model.head.features == [
        "block_6_expand_relu", "block_13_expand_relu", "out_relu"]  # the demo names its own
    assert load_config("voc_deeplabv3.yaml").model.head.features == ["block_16_project"]
    cfg = load_config("shapes_ssdlite.yaml", ["model.head.features=null"])
    assert cfg.model.head.features == ["block_13_expand_relu", "out_relu"]

    with pytest.raises(ConfigError, match=r"override 'model.head.features=\[block_13_expand_rel\]"
                                          r"': key 'model.head.features' names "
                                          r"'block_13_expand_rel', which backbone mobilenet_v2 does "
                                          r"not have; did you mean 'block_13_expand_relu'\? its "
                                          r"taps are Conv1_relu, expanded_conv_depthwise_relu"):
        load_config("shapes_ssdlite.yaml", ["model.head.features=[block_13_expand_rel]"])
    with pytest.raises(ConfigError, match=r"override 'model.head.features=\[block_16_project,"
                                          r"out_relu\]': key 'model.head.features' names 2 taps, but the classification head reads one"):
        load_config("shapes_classifier.yaml", ["model.head.features=[block_16_project,out_relu]"])
    with pytest.raises(ConfigError, match=r"finest first \(strides not decreasing\), got out_relu "
                                          r"\(stride 32\), block_13_expand_relu \(stride 16\)"):
        load_config("shapes_ssdlite.yaml", ["model.head.features=[out_relu,block_13_expand_relu]"])
    with pytest.raises(ConfigError, match=r"key 'model.backbone.name' must be one of "
                                          r"'mobilenet_v2', got 'mobilenet_v3'"):
        load_config("shapes_ssdlite.yaml", ["model.backbone.name=mobilenet_v3"])


def test_data_decode_defaults_to_the_graph_and_is_checked():
    assert load_config("shapes_ssdlite.yaml").data.decode == "graph"
    with pytest.raises(ConfigError, match=r"key 'data.decode' must be one of 'graph', 'python', "
                                          r"got 'pillow'"):
        load_config("shapes_ssdlite.yaml", ["data.decode=pillow"])


def test_deeplab_tap_without_default_rates_is_refused():
    with pytest.raises(ConfigError, match=r"reads 'block_3_expand_relu' at stride 4, which has no "
                                          r"default ASPP rates .* set key 'model.head.aspp_rates'"):
        load_config("voc_deeplabv3.yaml", ["model.head.features=[block_3_expand_relu]"])
    cfg = load_config("voc_deeplabv3.yaml", ["model.head.features=[block_3_expand_relu]",
                                             "model.head.aspp_rates=[24,48,72]"])
    assert cfg.model.head.aspp_rates == [24, 48, 72]
