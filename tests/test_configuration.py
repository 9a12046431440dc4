"""The shared vocabulary and the declared fields of `modeling_stepcot.configuration_stepcot`."""

import pytest

from modeling_stepcot.configuration_stepcot import (
    DEFAULT_STEP_NAMES,
    DETECTION,
    DIAGNOSIS,
    LOCATION,
    StepCoTStudentConfig,
)


def test_step_indices_name_the_default_schema():
    assert DEFAULT_STEP_NAMES[DETECTION] == "Detection"
    assert DEFAULT_STEP_NAMES[LOCATION] == "Anatomical location"
    assert DEFAULT_STEP_NAMES[DIAGNOSIS] == "Diagnosis"


def test_calibration_is_a_declared_field_that_round_trips(tmp_path):
    assert StepCoTStudentConfig().calibration is None
    calibration = {"method": "temperature", "temperatures": [1.5] * 7, "split": "demo:validation"}
    StepCoTStudentConfig(calibration=calibration).save_pretrained(tmp_path)
    assert StepCoTStudentConfig.from_pretrained(tmp_path).calibration == calibration
    with pytest.raises(Exception, match="calibration"):  # a declared field is type-checked; a list is no dict
        StepCoTStudentConfig(calibration=[1.5] * 7)
