"""Loading a calibration that a killed run left unfinished says what to do."""

from __future__ import annotations

import json

import pytest

from thinkaloud.data.calibrate import load_calibration


def test_incomplete_calibration_says_to_rerun(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"complete": False, "shards": []}))
    with pytest.raises(ValueError, match="incomplete calibration; run the same calibrate command again"):
        load_calibration(tmp_path)
