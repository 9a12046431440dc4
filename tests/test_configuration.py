"""The shared vocabulary, the declared fields and a ConfigTester-style battery of both configs."""

import json

import pytest

from modeling_stepcot.configuration_stepcot import (
    DEFAULT_STEP_NAMES,
    DETECTION,
    DIAGNOSIS,
    LOCATION,
    StepCoTConfig,
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


# A ConfigTester-style battery run on both configs: the checks every transformers config passes.
CONFIG_CLASSES = pytest.mark.parametrize("config_class", [StepCoTConfig, StepCoTStudentConfig],
                                         ids=["teacher", "student"])
PAPER_HIDDEN_SIZE = {StepCoTConfig: 768, StepCoTStudentConfig: 512}
# One non-default value per declared field of each config (no default may equal these).
NON_DEFAULT_VALUES = {
    StepCoTConfig: {"hidden_size": 64, "gat_num_heads": 2, "gat_num_layers": 3, "gat_attention_dropout": 0.05,
                    "gat_negative_slope": 0.1, "fusion_dropout": 0.15, "image_projection_dropout": 0.25,
                    "per_step_image_projection": False, "classifier_dropout": 0.35, "use_memory": False,
                    "freeze_text_encoder": False, "question_max_length": 32, "vision_backbone": "efficientnet_lite0",
                    "image_size": 96,
                    "freeze_vision_encoder": False, "initializer_range": 0.01},
    StepCoTStudentConfig: {"hidden_size": 48, "projection_dropout": 0.1, "vision_backbone": "efficientnet_lite0",
                           "image_size": 96,
                           "freeze_vision_encoder": False, "initializer_range": 0.01},
}


@CONFIG_CLASSES
def test_config_initialises_without_arguments_at_the_papers_sizes(config_class):
    config = config_class()
    assert config.hidden_size == PAPER_HIDDEN_SIZE[config_class]
    assert config.num_steps == len(DEFAULT_STEP_NAMES) == len(config.num_classes_per_step)
    assert all(count >= 2 for count in config.num_classes_per_step)


@CONFIG_CLASSES
def test_every_declared_argument_is_applied_and_serialised(config_class):
    values = NON_DEFAULT_VALUES[config_class]
    defaults = config_class()
    assert all(getattr(defaults, name) != value for name, value in values.items())
    as_dict = config_class(**values).to_dict()
    assert {name: as_dict[name] for name in values} == values


@CONFIG_CLASSES
def test_config_round_trips_through_json_string_file_and_folder(config_class, tmp_path):
    config = config_class(**NON_DEFAULT_VALUES[config_class])
    assert json.loads(config.to_json_string())["hidden_size"] == config.hidden_size
    config.to_json_file(tmp_path / "config.json")
    assert config_class.from_json_file(tmp_path / "config.json").to_dict() == config.to_dict()
    config.save_pretrained(tmp_path / "folder")
    assert config_class.from_pretrained(tmp_path / "folder").to_dict() == config.to_dict()
    config.save_pretrained(tmp_path / "repo" / "sub")
    assert config_class.from_pretrained(tmp_path / "repo", subfolder="sub").to_dict() == config.to_dict()


@CONFIG_CLASSES
def test_a_custom_step_schema_round_trips(config_class, tmp_path):
    schema = {"step_names": ["Finding", "Side"], "step_questions": ["Any finding?", "Which side?"],
              "step_options": [["No", "Yes"], ["Left", "Right", "N/A"]]}
    config = config_class(**schema)
    assert config.num_classes_per_step == [2, 3] and config.na_label(0) is None and config.na_label(1) == 2
    config.save_pretrained(tmp_path)
    reloaded = config_class.from_pretrained(tmp_path)
    assert [reloaded.step_names, reloaded.step_questions, reloaded.step_options] == list(schema.values())


@CONFIG_CLASSES
@pytest.mark.parametrize("bad, message", [
    ({"step_names": ["A", "B"], "step_questions": ["a?"], "step_options": [["x", "y"], ["x", "y"]]}, "one entry per"),
    ({"step_names": ["A"], "step_questions": ["a?"], "step_options": [["x"]]}, "at least 2 options"),
    ({"step_names": ["A"], "step_questions": ["a?"], "step_options": [["x", "x"]]}, "duplicate options"),
    ({"step_names": ["A"], "step_questions": ["a?"], "step_options": [["N/A", "x"]]}, "must be the last"),
    ({"vision_backbone": "vgg"}, "vision_backbone"),
    ({"step_training_counts": [1, 2]}, "step_training_counts"),
], ids=["ragged", "one-option", "duplicate", "na-first", "backbone", "counts"])
def test_inconsistent_schema_is_refused_naming_the_field(config_class, bad, message):
    with pytest.raises(Exception, match=message):
        config_class(**bad)


def test_teacher_width_must_split_over_its_attention_heads():
    with pytest.raises(Exception, match="divisible by gat_num_heads"):
        StepCoTConfig(hidden_size=10, gat_num_heads=4)
    with pytest.raises(Exception, match="gat_num_layers"):
        StepCoTConfig(gat_num_layers=0)


@CONFIG_CLASSES
def test_clip_resolution_comes_from_its_tower_and_a_contradiction_is_refused(config_class):
    assert config_class(vision_config={"image_size": 96}).image_size == 96
    assert config_class(image_size=224).image_size == 224
    with pytest.raises(Exception, match="contradicts vision_config.image_size"):
        config_class(image_size=96)
