"""The live charts' SVG (ui/charts.py): each series a line through its points, in order, scaled into the plot."""

import math
import re

from ui.charts import HEIGHT, LEFT, RIGHT, TOP, WIDTH, line_chart_html

COLORS = {"sigma": "#4c78a8", "latent std": "#f58518", "guidance rms": "#4c78a8"}


def lines(chart: str) -> dict[str, list[tuple[float, float]]]:
    """series -> its polyline's (x, y) points, read back from the SVG."""
    found = re.findall(r'<polyline[^>]*data-series="([^"]*)"[^>]*points="([^"]*)"', chart)
    return {name: [tuple(float(v) for v in p.split(",")) for p in points.split()] for name, points in found}


def test_each_series_is_a_line_through_its_points_scaled_into_the_plot():
    chart = line_chart_html("Noise level", {"sigma": [(1, 14.6), (2, 5.0), (3, 0.03)],
                                            "latent std": [(1, 1.0), (2, 1.2), (3, 0.9)]}, COLORS)
    got = lines(chart)
    assert list(got) == ["sigma", "latent std"]
    sigma, std = got["sigma"], got["latent std"]
    assert len(sigma) == len(std) == 3
    # steps run left to right, inside the plot; a larger value is drawn higher (a smaller y)
    assert [x for x, _ in sigma] == sorted(x for x, _ in sigma)
    assert all(LEFT <= x <= WIDTH - RIGHT and TOP <= y <= HEIGHT for x, y in sigma + std)
    assert sigma[0][1] < sigma[1][1] < sigma[2][1]
    assert std[1][1] < std[0][1] < std[2][1]
    # both series share the axes: the largest value of all is at the top, the smallest at the bottom
    assert min(y for _, y in sigma + std) == sigma[0][1] and max(y for _, y in sigma + std) == sigma[2][1]
    assert 'stroke="#f58518"' in chart and "latent std" in chart


def test_values_that_are_not_numbers_are_left_out_and_a_chart_without_any_says_so():
    no_guidance = [(1, math.nan), (2, math.nan)]
    empty = line_chart_html("Guidance", {"guidance rms": no_guidance}, COLORS)
    assert "no steps yet" in empty and "<polyline" not in empty and "guidance rms" not in empty
    some = line_chart_html("Guidance", {"guidance rms": [(1, 0.5), (2, math.nan), (3, 0.25)]}, COLORS)
    assert [len(p) for p in lines(some).values()] == [2]


def test_one_point_and_a_flat_line_still_get_a_range():
    for points in ([(1, 2.0)], [(1, 2.0), (2, 2.0)]):
        (line,) = lines(line_chart_html("flat", {"sigma": points}, COLORS)).values()
        assert all(math.isfinite(x) and math.isfinite(y) and TOP <= y <= HEIGHT for x, y in line)


def test_titles_and_names_are_escaped():
    chart = line_chart_html("<b>rms</b>", {"a<script>": [(1, 1.0), (2, 2.0)]}, {"a<script>": "#000"})
    assert "<b>" not in chart and "<script>" not in chart and "&lt;b&gt;rms&lt;/b&gt;" in chart


def test_the_steps_run_end_to_end_and_the_axis_says_the_first_and_the_last():
    chart = line_chart_html("σ", {"sigma": [(1, 3.0), (2, 2.0), (12, 0.5)]}, COLORS)
    (line,) = lines(chart).values()
    assert (line[0][0], line[-1][0]) == (LEFT, WIDTH - RIGHT)
    assert '">1</text>' in chart and '">12</text>' in chart
