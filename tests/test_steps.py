"""The step table answers the report's questions about stages (which train with plotted curves,
their order and names), for stage names and for the file names stages write."""

from __future__ import annotations

from minispec import layout
from minispec.report.collect import sort_stages
from minispec.steps import plotted_curves, stage_label, stage_order, step_of_file


def test_file_names_map_back_to_their_step_and_variant():
    assert step_of_file("finetune")[0].name == "finetune"
    assert step_of_file("distill-width")[0].name == "distill"
    assert step_of_file("distill-width")[1] == "width"
    # the longest step name wins: a search-distill slot is no search stage
    assert step_of_file("search-distill-w-0")[0].name == "search-distill"
    assert step_of_file("search-distill-w-0")[1] == "w-0"
    assert step_of_file("prune-a-b")[1] == "a-b"  # variant names may hold hyphens
    for not_a_stage in ("distill", "distill-", "finetune-x", "plots", "teacher"):
        assert step_of_file(not_a_stage) is None, not_a_stage


def test_the_log_directory_of_a_stage_names_the_same_stage():
    for stage in ("finetune", "distill@width", "search-distill@w-0"):
        directory = layout.log_dir(stage).split("/")[-1]
        assert plotted_curves(directory) == plotted_curves(stage)
        assert step_of_file(directory)[0].name == stage.split("@")[0]
    assert stage_label("distill-width") == stage_label("distill@width") == "student width"


def test_plotted_training_stages_their_loss_and_label():
    assert plotted_curves("finetune") == "CE"
    assert plotted_curves("distill-depth") == "KD"
    assert plotted_curves("search-distill-w-0") is None  # candidates: not in the report's curves
    assert plotted_curves("prune-width") is None
    assert stage_label("finetune") == "teacher correction"
    assert stage_label("distill-width") == "student width"
    assert stage_label("prune-width") == "prune-width"


def test_teacher_correction_first_then_students_then_the_rest():
    names = {"prune-width", "distill-width", "evaluate", "finetune", "distill-depth", "search-w"}
    assert sort_stages(names) == [
        "finetune",
        "distill-depth",
        "distill-width",
        "evaluate",
        "prune-width",
        "search-w",
    ]
    assert stage_order("finetune") < stage_order("distill-a") < stage_order("a")
