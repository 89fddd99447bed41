"""The SVG line chart behind every run's plots/loss.svg: ticks, coordinates, odd data."""

from __future__ import annotations

import math
from xml.etree import ElementTree

import pytest

from glassgpt.svg_chart import Panel, Series, chart_svg, format_tick, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("low, high", [(0, 300), (2.11, 3.71), (5.93, 8.32), (0.0003, 0.0041), (-2, 7), (1, 1e6)])
def test_ticks_are_round_evenly_spaced_and_cover_the_range(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high
    assert 3 <= len(ticks) <= 12
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1
    step = steps.pop()
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 5, 10))


@pytest.mark.parametrize("low, high", [(3.0, 3.0), (1.0, 1.0 + 1e-13), (1e-320, 2e-320), (0.0, 0.0), (-7.0, -7.0)])
def test_one_value_or_a_range_too_narrow_for_floats_still_gives_distinct_ticks_around_it(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and high <= ticks[-1] and ticks[0] < ticks[-1]
    chart_svg("run", [Panel("p", "x", "y", [Series("s", [(low, low), (high, high)])])])  # no division by zero


def test_reversed_bounds_match_and_infinite_ones_are_refused():
    assert nice_ticks(9, 1) == nice_ticks(1, 9)
    with pytest.raises(ValueError, match="finite"):
        nice_ticks(0, math.inf)


def test_a_whole_number_axis_has_no_ticks_between_integers():
    assert nice_ticks(1, 2, min_step=1) == [1, 2]
    assert nice_ticks(1, 1, min_step=1) == [0, 1, 2]
    assert all(float(t).is_integer() for t in nice_ticks(0, 7, min_step=1))


def test_a_one_point_series_is_drawn_as_a_dot():
    root = ElementTree.fromstring(chart_svg("run", [Panel("loss", "step", "loss", [Series("train", [(1, 6.2)])])]))
    assert len(list(root.iter(f"{SVG}circle"))) == 1


def test_tick_labels_have_the_decimals_their_step_needs():
    assert [format_tick(v, 0.5) for v in (2.5, 3.0)] == ["2.5", "3.0"]
    assert format_tick(0.25, 0.25) == "0.25"
    assert format_tick(300, 50) == "300" and format_tick(12000, 2000) == "12,000"
    assert format_tick(-0.0, 0.1) == "0"


def lines(svg: str) -> dict[str, list[tuple[float, float]]]:
    root = ElementTree.fromstring(svg)
    return {line.get("data-label"): [tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in root.iter(f"{SVG}polyline")}


def test_points_land_where_their_values_say():
    train = [(1, 8.0), (2, 6.0), (3, 7.0), (4, 5.0)]
    svg = chart_svg("run", [Panel("loss", "step", "loss", [Series("train", train)])])
    (drawn,) = lines(svg).values()
    xs, ys = [x for x, _ in drawn], [y for _, y in drawn]
    assert xs == sorted(xs) and len(set(xs)) == 4
    assert ys.index(max(ys)) == 3 and ys.index(min(ys)) == 0  # SVG's y grows downwards: loss 5 is lowest
    # equal steps are equal distances, and y is linear in the value
    assert math.isclose(xs[1] - xs[0], xs[3] - xs[2], abs_tol=0.11)
    assert math.isclose((ys[1] - ys[0]) / (6 - 8), (ys[3] - ys[0]) / (5 - 8), rel_tol=1e-2)


def test_non_finite_points_are_left_out_and_an_empty_panel_says_so():
    svg = chart_svg("run", [Panel("loss", "step", "loss", [Series("train", [(1, 5.0), (2, math.nan), (3, math.inf),
                                                                            (4, 4.0)])]),
                            Panel("bpb", "step", "bpb", [Series("val", [])])])
    assert len(lines(svg)["train"]) == 2
    assert "no data yet" in svg and "nan" not in svg.lower().replace("nats", "")


def test_text_is_escaped_and_a_legend_appears_for_several_lines():
    panel = Panel("a <b> & c", "step", "loss", [Series("train", [(0, 1.0), (1, 2.0)]),
                                                  Series("val", [(0, 1.5)], markers=True)])
    root = ElementTree.fromstring(chart_svg("run & co", [panel]))  # would not parse unescaped
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "run & co" in texts and "a <b> & c" in texts
    assert texts.count("train") == 1 and texts.count("val") == 1  # the legend
    assert len(list(root.iter(f"{SVG}circle"))) == 1  # a marker on the one val point
