"""Names and defaults that the command line shows in its `--help` and the library uses: kept in a module that
imports nothing, so that building a command's parser imports neither torch nor transformers."""

# `stepcot demo`: what the README's main job writes
DEFAULT_DEMO_MODEL = "outputs/demo/student"
DEFAULT_DEMO_COMPARE = "outputs/demo/teacher"

# `stepcot baseline`: setting -> output subfolder
BASELINE_SETTINGS = {"with": "with_stepcot", "without": "without_stepcot", "probe": "linear_probe",
                     "majority": "majority"}
# `stepcot baseline`: the training defaults of its MLP heads (`BaselineTrainingConfig`); the paper gives no learning
# rate or weight decay for them
BASELINE_TRAINING_DEFAULTS = {"epochs": 50, "batch_size": 8, "learning_rate": 1e-4, "weight_decay": 0.01,
                              "max_grad_norm": 1.0, "hidden_size": 768}

# `stepcot eval-transfer`: how an image with several NIH findings is scored
MULTI_FINDING_POLICIES = ("exclude", "each")

# `stepcot bench-ablations`: name -> (ModelArguments fields of the ablation, rows: (metrics folder under the run,
# model name))
ABLATION_VARIANTS = {
    "full": ({}, [("teacher", "Teacher"), ("student", "Student")]),
    "no_memory": ({"use_memory": False}, [("teacher", "w/o Memory")]),
    "no_text": ({"use_text": False}, [("teacher", "w/o Text")]),
}

# `stepcot bench-efficiency`
EFFICIENCY_PRESETS = ("vision_encoder", "teacher", "student", "clip", "blip", "flava")
EFFICIENCY_DEFAULT_MODELS = ("vision_encoder", "teacher", "student", "clip")

# Images per forward pass: `stepcot eval` and `stepcot predict` (as eval), and `stepcot predict --maps`, whose
# Grad-CAM backward keeps every image's encoder activations
EVAL_BATCH_SIZE = 32
MAPS_BATCH_SIZE = 8
