"""Tool schemas come from type hints and docstrings, one source."""

from typing import Literal

import pytest

from llamatune.protocol import MODES
from llamatune.tools import all_tools, tool


def test_schema_from_hints_and_docstring():
    @tool
    def book(city: str, nights: int, budget: float | None = None, view: Literal["sea", "city"] = "sea",
             tags: list[str] | None = None) -> dict:
        """Book a hotel room.

        Args:
            city: Where to stay.
            nights: How many nights,
                at least one.
            budget: Max price per night.
            view: The view wanted.
            tags: Extra wishes.
        """
        return {"city": city}

    fn = book.schema["function"]
    assert book.name == "book" and fn["description"] == "Book a hotel room."
    props = fn["parameters"]["properties"]
    assert props["city"] == {"type": "string", "description": "Where to stay."}
    assert props["nights"] == {"type": "integer", "description": "How many nights, at least one."}
    assert props["budget"]["type"] == "number"
    assert props["view"] == {"type": "string", "enum": ["sea", "city"], "description": "The view wanted."}
    assert props["tags"]["type"] == "array" and props["tags"]["items"] == {"type": "string"}
    assert fn["parameters"]["required"] == ["city", "nights"]
    assert book("Oslo", 2) == {"city": "Oslo"}


def test_undocumented_or_untyped_arguments_are_refused():
    with pytest.raises(ValueError, match="'b' is not documented"):
        @tool
        def f(a: int, b: int) -> int:
            """Add.

            Args:
                a: first
            """

    with pytest.raises(TypeError, match="'a' has no type hint"):
        @tool
        def g(a) -> int:
            """G.

            Args:
                a: x
            """


def test_project_tools_and_modes():
    tools = all_tools()
    assert {"get_current_weather", "get_weather_forecast", "search_wikipedia", "get_wikipedia_summary"} <= set(tools)
    for names in MODES.values():
        assert set(names) <= set(tools)
    for t in tools.values():
        fn = t.schema["function"]
        assert fn["description"] and all(p["description"] for p in fn["parameters"]["properties"].values())
