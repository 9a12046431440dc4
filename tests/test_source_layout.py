"""Rules of the source tree, checked with `ast` so they stay true:

- The folders form layers, `modeling_stepcot` <- `dataset_script` <- `trainers`: no import runs back up (nothing in
  `dataset_script` imports `trainers`), and `modeling_stepcot` (remote code shipped inside checkpoints) imports
  its siblings only relatively, never the project by name.
- A first-party import inside a function says why (a `#` comment on its line or the line above: optional
  dependency, start-up time, import cycle). The `trainers.commands` modules are the stated exception: they import
  their library when the command runs, so that `stepcot --help` stays fast (their package docstring says so).
- No module imports another's private names (`_helper`): what is shared is public.
- The shared vocabulary (IGNORE_INDEX, NO_ANSWER, the step indices) is defined once, in
  `modeling_stepcot/configuration_stepcot.py`.
- Code, help and docs say what is; history lives in git log and in benchmarks/RESULTS.md (dated, with the commit).
  No internal milestone ("stop N") and no bare tracker reference ("issue N", "issues N"), as whole words and in any
  case, in: the Python files of the three packages, `model_cards/`, `benchmarks/` and `tests/` (command help is
  defined there); the Markdown of `README.md`, `docs/`, `model_cards/` and `benchmarks/` (RESULTS.md included: its
  sections carry a date and commit instead); `configs/`, `setup.cfg` and `pyproject.toml`. In the same files but
  RESULTS.md (a dated log, whose tables name a "before fix" variant), no "before the fix" narration either.
- Dead code stays out: the functions removed as unused are defined nowhere in the packages, and no body has two
  consecutive `if` statements on the same condition (they are one block).
- `docs/architecture.md` names only modules that exist (every backticked `folder/module.py`), and the README links it.
- No package module is over 700 lines, and none is named after a builtin or a standard-library module.
- Tests are named after what they test: `tests/test_<module>[_<aspect>].py`, <module> being a package or benchmark
  module's file name (remote-code files without `_stepcot`); the tests of the project as a whole are listed in
  `CROSS_CUTTING_TESTS`. The README's "Where things are" states the rule.
"""

import ast
import builtins
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"modeling_stepcot": 0, "dataset_script": 1, "trainers": 2}
FIRST_PARTY = (*LAYERS, "model_cards")
VOCABULARY = {"IGNORE_INDEX", "NO_ANSWER", "DETECTION", "DISTRIBUTION", "PATTERN", "LOCATION", "MORPHOLOGY",
              "SECONDARY", "DIAGNOSIS"}
VOCABULARY_HOME = Path("modeling_stepcot/configuration_stepcot.py")
# The exported `evaluate` module ships metrics.py alone (numpy only), so it keeps its own copy of the label padding;
# the copy must equal the home value (asserted below).
VOCABULARY_COPIES = {(Path("trainers/evaluation/metrics.py"), "IGNORE_INDEX")}
LAZY_IMPORTS_STATED_IN_PACKAGE_DOCSTRING = Path("trainers/commands")


def _sources():
    for top in LAYERS:
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path.relative_to(ROOT), ast.parse(path.read_text(encoding="utf-8"))


def _imported_modules(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return ["." * node.level + (node.module or "")]
    return []


def _first_party(module: str) -> bool:
    return module.startswith(".") or module.split(".")[0] in FIRST_PARTY


def test_no_import_runs_back_up_the_layers():
    problems = []
    for path, tree in _sources():
        layer = LAYERS[path.parts[0]]
        for node in ast.walk(tree):
            for module in _imported_modules(node):
                top = module.split(".")[0]
                if path.parts[0] == "modeling_stepcot" and top in FIRST_PARTY:
                    problems.append(f"{path}:{node.lineno}: remote code imports {module} by name (use a relative "
                                    "sibling import)")
                elif top in LAYERS and LAYERS[top] > layer:
                    problems.append(f"{path}:{node.lineno}: {path.parts[0]} imports {module}, a layer above it")
    assert problems == []


def test_first_party_imports_inside_functions_state_why():
    problems = []
    for path, tree in _sources():
        if path.parent == LAZY_IMPORTS_STATED_IN_PACKAGE_DOCSTRING:
            continue
        lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                modules = [m for m in _imported_modules(node) if _first_party(m)]
                if not modules:
                    continue
                nearby = lines[node.lineno - 2:node.end_lineno]  # the line above and the statement's own lines
                if not any("#" in line for line in nearby):
                    problems.append(f"{path}:{node.lineno}: {function.name} imports {modules[0]} without a reason")
    assert problems == []


def test_no_private_name_is_imported_across_modules():
    problems = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _first_party("." * node.level + (node.module or "")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    problems.append(f"{path}:{node.lineno}: imports {', '.join(private)} from {node.module}")
    assert problems == []


def test_commands_package_states_why_it_imports_lazily():
    docstring = ast.get_docstring(ast.parse((ROOT / LAZY_IMPORTS_STATED_IN_PACKAGE_DOCSTRING / "__init__.py")
                                            .read_text(encoding="utf-8")))
    assert "--help" in docstring and "import" in docstring


def test_the_shared_vocabulary_is_defined_once():
    definitions = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                names = [e.id for e in getattr(target, "elts", [target]) if isinstance(e, ast.Name)]
                definitions += [(name, path) for name in names
                                if name in VOCABULARY and (path, name) not in VOCABULARY_COPIES]
    assert {path for _, path in definitions} == {VOCABULARY_HOME}
    assert {name for name, _ in definitions} == VOCABULARY
    import modeling_stepcot.configuration_stepcot as home
    import trainers.evaluation.metrics as metrics
    assert all(getattr(metrics, name) == getattr(home, name) for _, name in VOCABULARY_COPIES)


# -- history stays in git log and RESULTS ------------------------------------------------------------------------
HISTORY_WORDS = re.compile(r"\bstop[ -]?\d+\b|\bissues?[ #]*\d+\b", re.IGNORECASE)
FIX_NARRATION = re.compile(r"\bbefore the fix\b", re.IGNORECASE)
NARRATION_ALLOWED = {Path("benchmarks/RESULTS.md")}


def _prose_files():
    """The files whose text must speak in the present tense (see the module docstring)."""
    for top in (*LAYERS, "model_cards", "benchmarks", "tests"):
        yield from sorted((ROOT / top).rglob("*.py"))
    for top in ("docs", "model_cards", "benchmarks"):
        yield from sorted((ROOT / top).rglob("*.md"))
    yield from sorted((ROOT / "configs").rglob("*.yaml"))
    yield from (ROOT / name for name in ("README.md", "setup.cfg", "pyproject.toml"))


def test_code_help_and_docs_name_no_milestone_or_tracker_issue():
    this_file = Path(__file__).resolve()
    problems = []
    for path in _prose_files():
        if path.resolve() == this_file or ".venv" in path.parts:
            continue
        relative = path.relative_to(ROOT)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found = HISTORY_WORDS.search(line) or (relative not in NARRATION_ALLOWED and FIX_NARRATION.search(line))
            if found:
                problems.append(f"{relative}:{number}: {found.group(0)!r}")
    assert problems == []


def test_the_history_rule_sees_what_it_forbids():
    assert HISTORY_WORDS.search("as in Stop-9") and HISTORY_WORDS.search("(issue 13)")
    assert HISTORY_WORDS.search("stop " + "10") and HISTORY_WORDS.search("Issues #11")
    assert not HISTORY_WORDS.search("stopped 3 times") and not HISTORY_WORDS.search("the issues 2x")
    assert FIX_NARRATION.search("as it was before the fix")


# -- dead code stays out ---------------------------------------------------------------------------------------------
REMOVED_AS_UNUSED = {"primary_lesion", "resolve_image_path", "check_metadata", "parameter_count"}


def test_functions_removed_as_unused_are_defined_nowhere():
    defined = [f"{path}:{node.lineno}: {node.name}" for path, tree in _sources() for node in ast.walk(tree)
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in REMOVED_AS_UNUSED]
    assert defined == []


def _names(*nodes) -> set[str]:
    return {name.id for node in nodes for name in ast.walk(node) if isinstance(name, ast.Name)}


def test_no_two_consecutive_ifs_test_the_same_condition():
    """Two adjacent `if`s on one condition are one block, unless the first block touches a name the condition reads
    (it may change the condition's value)."""
    problems = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            for block in (body, getattr(node, "orelse", None), getattr(node, "finalbody", None)):
                if not isinstance(block, list):
                    continue
                for first, second in zip(block, block[1:]):
                    if (isinstance(first, ast.If) and isinstance(second, ast.If) and not first.orelse
                            and ast.dump(first.test) == ast.dump(second.test)
                            and not _names(*first.body) & _names(first.test)):
                        problems.append(f"{path}:{second.lineno}: `if {ast.unparse(second.test)}` again")
    assert problems == []


# -- the architecture page -------------------------------------------------------------------------------------------
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def test_architecture_page_names_only_modules_that_exist():
    named = set(re.findall(r"`((?:[\w-]+/)+[\w-]+\.py)`", ARCHITECTURE.read_text(encoding="utf-8")))
    assert len(named) > 20  # the page names the module of every stage
    assert sorted(path for path in named if not (ROOT / path).is_file()) == []
    assert "docs/architecture.md" in (ROOT / "README.md").read_text(encoding="utf-8")


# -- module size and names -------------------------------------------------------------------------------------------
MAX_MODULE_LINES = 700


def test_no_package_module_is_over_700_lines():
    long = [f"{path}: {n} lines" for path, _ in _sources()
            if (n := len((ROOT / path).read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert long == []


def test_no_module_is_named_after_a_builtin_or_a_standard_library_module():
    shadowing = set(dir(builtins)) | set(sys.stdlib_module_names)
    named = [str(path) for path, _ in _sources() if path.stem in shadowing]
    assert named == []


# -- tests are named after what they test ----------------------------------------------------------------------------
# Tests of one module: tests/test_<module>[_<aspect>].py, <module> being a package or benchmark module's file name
# without `.py` (and without the `_stepcot` suffix of the remote-code files). These test the project as a whole:
CROSS_CUTTING_TESTS = {
    "test_source_layout.py", "test_packaging.py", "test_readme_examples.py", "test_python_api.py",
    "test_real_data_learning.py", "test_model_battery.py", "test_cleanroom_models.py",
    "test_custom_schema_training.py", "test_accelerate_configs.py", "test_ddp_training.py", "test_hostile_security.py",
    "test_honest_chains.py", "test_runbook.py",
}


def _module_stems() -> set[str]:
    stems = {path.stem.removesuffix("_stepcot") for path, _ in _sources()} | {
        path.parent.name for path, _ in _sources() if path.stem == "__init__"}
    return stems | {path.stem for path in (ROOT / "benchmarks").glob("*.py")}


def test_every_test_file_is_named_after_its_module_or_listed_as_cross_cutting():
    stems = _module_stems()
    misnamed = [path.name for path in sorted((ROOT / "tests").glob("test_*.py"))
                if path.name not in CROSS_CUTTING_TESTS
                and not any(path.stem == f"test_{stem}" or path.stem.startswith(f"test_{stem}_") for stem in stems)]
    assert misnamed == []
    assert sorted(name for name in CROSS_CUTTING_TESTS if not (ROOT / "tests" / name).is_file()) == []


def test_the_naming_rules_see_what_they_forbid():
    assert {"eval", "input", "json", "types"} <= set(dir(builtins)) | set(sys.stdlib_module_names)
    stems = _module_stems()
    assert {"modeling", "pipeline", "release", "web_demo", "run_distill", "real_data_study"} <= stems
    assert "stepcot" not in stems and "tests" not in stems
