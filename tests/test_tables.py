"""rayseg.tables.format_table: widths, alignment, rules, errors."""

import pytest

from rayseg.tables import format_table


def test_columns_padded_to_the_widest_cell_with_a_rule_under_the_header():
    table = format_table(["name", "n"], [["a", 1], ["long name", 22]])
    assert table.splitlines() == [
        "name       n",
        "-------------",
        "a          1",
        "long name  22",
    ]


def test_right_alignment_separator_rows_and_no_trailing_spaces():
    table = format_table(("class", "IoU", "note"), [("bg", "50.00", ""), None, ("mIoU", "5.00", "x")], "<><")
    assert table.splitlines() == [
        "class    IoU  note",
        "------------------",
        "bg     50.00",
        "------------------",
        "mIoU    5.00  x",
    ]


def test_a_header_wider_than_every_cell_sets_the_width_and_no_rows_is_header_and_rule():
    assert format_table(["wide header", "b"], []) == "wide header  b\n--------------"


@pytest.mark.parametrize("header, rows, align", [
    (["a", "b"], [["1"]], None),
    (["a", "b"], [["1", "2", "3"]], None),
    (["a", "b"], [], "<"),
    (["a", "b"], [], "<^"),
])
def test_ragged_rows_and_bad_align_are_errors(header, rows, align):
    with pytest.raises(ValueError):
        format_table(header, rows, align)
