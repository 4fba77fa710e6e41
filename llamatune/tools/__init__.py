"""The project's tools: typed functions whose JSON schemas come from their signatures and docstrings
(:mod:`llamatune.tools.schema`), the weather and Wikipedia tools over HTTP (:mod:`llamatune.tools.http`), and offline
distractors. Which tools each agent mode offers is part of the serving contract (:data:`llamatune.protocol.MODES`).
"""

from __future__ import annotations

from llamatune.tools.schema import Tool, function_schema, tool  # noqa: F401  (the package's API)


def all_tools() -> dict[str, Tool]:
    """Every tool of the project by name (weather, Wikipedia, and the offline distractors)."""
    from llamatune.tools import misc, weather, wikipedia

    tools = [weather.get_current_weather, weather.get_weather_forecast, wikipedia.search_wikipedia,
             wikipedia.get_wikipedia_summary, misc.convert_units, misc.get_local_time, misc.calculate]
    return {t.name: t for t in tools}
