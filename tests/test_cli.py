"""`profile` against the paper's figures, and the scripts as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mobilevision.cli import main

ROOT = Path(__file__).resolve().parents[1]
# docs/paper.md: keras.applications.MobileNetV2, 1000 classes, 224 px.
REFERENCE = {0.35: (1_691_208, 59.3e6), 1.0: (3_538_984, 300.8e6), 1.4: (6_156_712, 582.2e6)}


@pytest.mark.parametrize("alpha", sorted(REFERENCE))
def test_profile_json_matches_paper_table(alpha, capsys):
    assert main(["profile", "--config", "imagenet_mobilenetv2.yaml", "--json",
                 f"model.backbone.alpha={alpha}"]) == 0
    prof = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    params, madds = REFERENCE[alpha]
    assert prof["params"] == params
    assert abs(prof["madds"] - madds) / madds < 0.01
    assert prof["peak_activation_bytes"] > 0
    assert prof["features"]["block_13_expand_relu"]["stride"] == 16
    assert prof["features"]["out_relu"] == {"shape": [7, 7, 1280 if alpha <= 1 else 1792],
                                            "stride": 32}


def test_profile_reports_taps_at_output_stride_8(capsys):
    assert main(["profile", "--config", "imagenet_mobilenetv2.yaml", "--json",
                 "model.backbone.output_stride=8", "model.input_size=[320,320]"]) == 0
    feats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["features"]
    assert feats["block_6_expand_relu"] == {"shape": [40, 40, 192], "stride": 8}
    assert feats["block_16_project"] == {"shape": [40, 40, 320], "stride": 8}


def test_profile_script_prints_a_readable_summary():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "profile.py"), "--config",
                           "shapes_classifier.yaml"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "params" in out and "MAdds" in out and "peak activations" in out
    assert "block_13_expand_relu" in out and "stride 16" in out


def test_profile_coco_ssdlite_matches_paper_table_6(capsys):
    # docs/paper.md: MNet V2 + SSDLite, 320 x 320, 80 classes: 4.3M params, 0.8B MAdds; the
    # reference build (81 outputs per anchor, 3 anchors on the first map and 6 on the others) 4,387,765.
    assert main(["profile", "--config", "coco_ssdlite.yaml", "--json"]) == 0
    prof = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert prof["params"] == 4_387_765
    assert abs(prof["params"] - 4.3e6) / 4.3e6 < 0.03
    assert abs(prof["madds"] - 0.8e9) / 0.8e9 < 0.05
