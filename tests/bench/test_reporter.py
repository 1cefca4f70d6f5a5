"""The reporter: every key of every row is a column; a row without one shows a dash."""

from rich.console import Console

from opensora_core.bench.reporter import Report, markdown_table, median_spread, show

ROWS = [{"model": "ours", "tokens/s": 10.5}, {"model": "ours, compile", "tokens/s": 12.0, "compile_s": 3.1}]


def test_markdown_table_has_a_column_per_key_and_a_dash_where_a_row_lacks_one():
    assert markdown_table(ROWS).splitlines() == [
        "| model | tokens/s | compile_s |",
        "| --- | --- | --- |",
        "| ours | 10.5 | - |",
        "| ours, compile | 12.0 | 3.1 |",
    ]


def test_show_prints_the_table_then_the_lines_under_it():
    console = Console(record=True, width=200)
    show(Report("t", "Title", ROWS, left=("model",), lines=["ours, compile / ours: 1.14x"]), console)
    text = console.export_text()
    assert "compile_s" in text and "3.1" in text
    assert text.index("Title") < text.index("ours, compile / ours: 1.14x")


def test_median_spread_scales_and_rounds():
    assert median_spread([0.002, 0.001, 0.004], scale=1e3, digits=1) == "2.0 (1.0-4.0)"
